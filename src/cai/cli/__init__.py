"""The `cai` command: one module per command group; `kit` is what they share."""

from cai.cli.commands import app, main

__all__ = ["app", "main"]
