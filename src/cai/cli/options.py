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
from typer.core import TyperCommand

from cai.options import INPUT, PANELS, Option, declared
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


def _parameter(name: str, kind: Any, opt: Option, batch: bool) -> inspect.Parameter:
    default = opt.default if not opt.targets else option_field(opt.targets[0]).default if opt.shown else None
    help = opt.help
    if batch and opt.shorthand:  # the models' default, local, has no batch API (cai.batch.apis)
        default, help = None, f"{help} A batch job needs openai: or anthropic:."
    kind = Path if opt.path else _cli_type(kind)
    if default is None:
        kind = Optional[kind]  # noqa: UP045 (typer reads Optional)
    info = typer.Option(*opt.flags, help=help, rich_help_panel=opt.help_panel, **_bounds(opt))
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
        *(_parameter(name, kind, opt, batch) for name, (kind, opt) in declared().items() if opt.batch or not batch),
        *own])


def run_option(name: str, note: str = "Default: the run's setting.") -> Any:
    """The typer.Option of the run option `name` for another command (`cai export`, `cai label`): its declared
    flags and help, and `note` (by default: not given, the run's own setting holds)."""
    opt = declared()[name][1]
    return typer.Option(*opt.flags, help=f"{opt.help} {note}".strip())


class PanelCommand(TyperCommand):
    """`cai run` and `cai batch submit`: `--help` lists the run options in their panels (`cai.options.PANELS`,
    typer's `rich_help_panel`), then the command's own options."""

    def format_options(self, ctx: typer.Context, formatter: Any) -> None:
        args: list[tuple[str, str]] = []
        panels: dict[str, list[tuple[str, str]]] = {}
        for param in self.get_params(ctx):
            if (record := param.get_help_record(ctx)) is None:
                continue
            if param.param_type_name == "argument":
                args.append(record)
            else:
                panels.setdefault(getattr(param, "rich_help_panel", None) or "Options", []).append(record)
        order = ["Arguments", *PANELS, *(p for p in panels if p not in PANELS)]
        for title in order:
            if rows := args if title == "Arguments" else panels.get(title):
                with formatter.section(title):
                    formatter.write_dl(rows)


def given(ctx: typer.Context, values: dict[str, Any]) -> dict[str, Any]:
    """The options of `values` the command line gave (not their defaults)."""
    return {k: v for k, v in values.items() if getattr(ctx.get_parameter_source(k), "name", "") != "DEFAULT"}
