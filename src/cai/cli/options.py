"""The typer parameters of `cai run` and `cai batch submit`, made from the run options' declarations
(`cai.options`): name, type, default and bounds of the settings field, help text and flags of the Option.

A command built here passes on only the options given on its command line (`given`), so that
`RunSettings.from_options` alone fills the defaults and an error names only what the user typed.
"""

from __future__ import annotations

import inspect
import types
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Optional, Union, get_args, get_origin

import typer
from annotated_types import Ge, Gt, Le

from cai.options import INPUT, Option, declared
from cai.settings import option_field


def _cli_type(kind: Any) -> Any:
    """The command line's type for the library's `kind`: `X` for `X | None`, a repeated option (`list[X]`) for
    one that also takes a sequence (`str | Sequence[str]`)."""
    if get_origin(kind) not in (Union, types.UnionType):
        return kind
    args = [a for a in get_args(kind) if a is not type(None)]
    if many := [a for a in args if get_origin(a) is Sequence]:
        return list[get_args(many[0])[0]]  # type: ignore[misc]
    return args[0] if len(args) == 1 else kind


def _bounds(opt: Option) -> dict[str, Any]:
    """The command line's min and max: the field's bounds, or the Option's stricter `min`."""
    out: dict[str, Any] = {}
    for m in option_field(opt.targets[0]).metadata if opt.targets else ():
        if isinstance(m, (Ge, Gt)):
            out["min"] = getattr(m, "ge", getattr(m, "gt", None))
        elif isinstance(m, Le):
            out["max"] = m.le
    return {**out, "min": opt.min} if opt.min is not None else out


def _parameter(name: str, kind: Any, opt: Option) -> inspect.Parameter:
    default = opt.default if not opt.targets else option_field(opt.targets[0]).default if opt.shown else None
    kind = Path if opt.path else _cli_type(kind)
    if default is None:
        kind = Optional[kind]  # noqa: UP045 (typer reads Optional)
    info = typer.Option(*opt.flags, help=opt.help, **_bounds(opt))
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default,
                             annotation=Annotated[kind, info])


def signature(batch: bool = False) -> inspect.Signature:
    """`cai run`'s parameters (with `batch`: `cai batch submit`'s): the context, the prompts, the run options in
    their declared order, `--json` and (not for a batch) `--quiet`."""
    arg, kw = inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY
    own = [inspect.Parameter("as_json", kw, default=False, annotation=Annotated[bool, typer.Option(
        "--json", help="Print the summary as JSON to stdout.")])]
    if not batch:
        own.append(inspect.Parameter("quiet", kw, default=False, annotation=Annotated[bool, typer.Option(
            help="No progress display.")]))
    return inspect.Signature([
        inspect.Parameter("ctx", arg, annotation=typer.Context),
        inspect.Parameter("input", arg, annotation=Annotated[Path, typer.Argument(help=INPUT.help)]),
        *(_parameter(name, kind, opt) for name, (kind, opt) in declared().items() if opt.batch or not batch),
        *own])


def given(ctx: typer.Context, values: dict[str, Any]) -> dict[str, Any]:
    """The options of `values` the command line gave (not their defaults)."""
    return {k: v for k, v in values.items() if getattr(ctx.get_parameter_source(k), "name", "") != "DEFAULT"}
