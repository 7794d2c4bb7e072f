"""What every `cai` command shares: the stderr console (`say`), clean failures, JSON to stdout, and signals.

Only the CLI installs signal handlers: Ctrl-C and SIGTERM end a command with exit 130; during the event
loop they cancel the running task (`run_async`), so the library underneath stops without a handler of its
own and keeps everything it committed."""

from __future__ import annotations

import asyncio
import functools
import json
import signal
import sys
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import typer
from rich.console import Console
from typer.core import TyperGroup

from cai.errors import CaiError, InputError, Interrupted, one_line
from cai.redact import redact

# soft_wrap: long lines (paths, URLs, commands to copy) are never hard-wrapped, terminal or not.
err = Console(stderr=True, soft_wrap=True)
F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")
INTERRUPTED = "interrupted; run the same command again to resume (committed steps are kept)"


def say(text: str) -> None:
    """`text` on stderr as it is: no markup, no highlighting, never hard-wrapped (paths in it must copy-paste)."""
    err.print(text, markup=False, highlight=False)


def renamed(ctx: typer.Context, old: str, new: str) -> Any:
    """The value of the parameter `new`, or of `old`, its hidden old spelling: given, the old one prints one
    deprecation line on stderr; both given with different values is an InputError."""
    if getattr(ctx.get_parameter_source(old), "name", "DEFAULT") == "DEFAULT":
        return ctx.params[new]
    params = {p.name: p for p in ctx.command.params}
    spell_old = "/".join(params[old].opts) + (f" {params[old].metavar}" if params[old].metavar else "")
    spell_new = "/".join(sorted(params[new].opts, key=len))
    say(f"cai: {spell_old} is deprecated for {ctx.command_path}; use {spell_new}")
    given_new = getattr(ctx.get_parameter_source(new), "name", "DEFAULT") != "DEFAULT"
    if given_new and ctx.params[new] != ctx.params[old]:
        raise InputError(f"give {spell_new} once ({params[old].opts[0]} is its old spelling)")
    return ctx.params[old]


def fails_cleanly(fn: F) -> F:
    """A CaiError becomes one line on stderr and its exit code; Ctrl-C exits 130."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        previous = signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM is Ctrl-C from the start
        try:
            return fn(*args, **kwargs)
        except CaiError as e:
            prefix = "" if e.exit_code == 130 else "error: "
            say(f"{prefix}{redact(str(e))}")
            raise typer.Exit(e.exit_code) from None
        except KeyboardInterrupt:
            say(INTERRUPTED)
            raise typer.Exit(130) from None
        finally:
            signal.signal(signal.SIGTERM, previous)

    return wrapper  # type: ignore[return-value]


class OneLineErrors(TyperGroup):
    """The `cai` command group: a usage error (a bad option value, an unknown option or command, a missing
    argument) is one line on stderr naming the command and the option, and exit 2, like every other error."""

    def main(self, *args: Any, standalone_mode: bool = True, **extra: Any) -> Any:
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **extra)
        # typer's own click (vendored in newer typer, click itself in older ones) raises these
        click = sys.modules[typer.BadParameter.__module__]
        try:
            code = super().main(*args, standalone_mode=False, **extra)
        except click.UsageError as e:
            if type(e).__name__ == "NoArgsIsHelpError":  # bare `cai` or `cai rbr`: the help, as before
                e.show()
                raise SystemExit(e.exit_code) from None
            command = e.ctx.command_path if e.ctx else "cai"
            say(f"error: {command}: {one_line(e.format_message())} (see {command} -h)")
            raise SystemExit(e.exit_code) from None
        except click.ClickException as e:
            say(f"error: {one_line(e.format_message())}")
            raise SystemExit(e.exit_code) from None
        except typer.Abort:
            say(INTERRUPTED)
            raise SystemExit(130) from None
        raise SystemExit(code if isinstance(code, int) else 0)


def emit(data: Any) -> None:
    """Print `data` as JSON to stdout."""
    print(json.dumps(data, indent=2, sort_keys=True, default=str))


async def stoppable(work: Coroutine[Any, Any, T]) -> T:
    """Await `work`; SIGINT or SIGTERM cancels it (the event loop hears them) and raises Interrupted.
    Off the main thread (which alone takes signals) it just awaits `work`."""
    if threading.current_thread() is not threading.main_thread():
        return await work
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(work)
    stopped = False

    def stop() -> None:
        nonlocal stopped
        stopped = True
        task.cancel()

    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig in previous:
        loop.add_signal_handler(sig, stop)
    try:
        return await task
    except asyncio.CancelledError:
        if stopped:
            raise Interrupted(INTERRUPTED) from None
        raise
    finally:
        for sig, handler in previous.items():
            loop.remove_signal_handler(sig)
            signal.signal(sig, handler)  # the loop's removal would leave SIG_DFL for SIGTERM


def run_async(work: Coroutine[Any, Any, T]) -> T:
    """Run `work` on a new event loop; Ctrl-C or SIGTERM cancel it and raise Interrupted."""
    return asyncio.run(stoppable(work))
