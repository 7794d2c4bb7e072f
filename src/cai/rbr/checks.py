"""The deterministic checks, kept importable here: they live in `cai.checks`, next to the constitution
that names them (a constitution's `checks` are validated against that registry when it loads)."""

from __future__ import annotations

from cai.checks import CHECKS, CheckFn, check, refusal_phrasing, run_checks

__all__ = ["CHECKS", "CheckFn", "check", "refusal_phrasing", "run_checks"]
