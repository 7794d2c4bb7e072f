"""Providers behind one small protocol; each module registers its class under a prefix."""

from cai.providers.base import Model, get_model, register

__all__ = ["Model", "get_model", "register"]
