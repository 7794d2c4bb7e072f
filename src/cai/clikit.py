"""What every `cai` command shares: the stderr console, clean failures, JSON to stdout."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from rich.console import Console

from cai.errors import CaiError
from cai.redact import redact

# soft_wrap: long lines (paths, URLs, commands to copy) are never hard-wrapped, terminal or not.
err = Console(stderr=True, soft_wrap=True)
F = TypeVar("F", bound=Callable[..., Any])


def fails_cleanly(fn: F) -> F:
    """A CaiError becomes one line on stderr and its exit code; Ctrl-C exits 130."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except CaiError as e:
            prefix = "" if e.exit_code == 130 else "error: "
            err.print(f"{prefix}{redact(str(e))}", markup=False, highlight=False, soft_wrap=True)
            raise typer.Exit(e.exit_code) from None
        except KeyboardInterrupt:
            err.print("interrupted; run the same command again to resume (committed steps are kept)", markup=False,
                      highlight=False)
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def emit(data: Any) -> None:
    """Print `data` as JSON to stdout."""
    print(json.dumps(data, indent=2, sort_keys=True, default=str))
