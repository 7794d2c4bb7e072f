"""Deterministic scoring checks and the refusal classifier."""
