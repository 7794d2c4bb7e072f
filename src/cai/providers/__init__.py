"""Providers behind one small protocol (`Model`); each is a `provider.NAME` plugin (`cai.plugins`)."""

from cai.providers.base import Model, get_model

__all__ = ["Model", "get_model"]
