"""`cai estimate PROMPTS [every option of cai run] [--json]`: what the run would cost, before any call."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Annotated, Any

import typer

from cai.cli.kit import emit, say
from cai.cli.options import given, signature

COLUMNS = ("role", "model", "calls", "tokens in", "out (max)", "out (expected)", "standard", "batch", "fewshot 0")


def estimate(ctx: typer.Context, input: Path, as_json: bool, **options: Any) -> None:
    """Count the calls, tokens and cost of `cai run` with the same arguments, without calling a model or
    creating anything; records already done in --out are not counted. Token counts and caveats: docs/cost.md.

    \b
    Example:
      cai estimate examples/prompts.jsonl --limit 6 --max-tokens 64 \\
        --model openai:gpt-4o-mini
    """
    from cai.api import estimate as estimate_run
    from cai.runs import normalize_out

    options = given(ctx, options)
    out = normalize_out(options.pop("out", None) or Path("runs") / input.stem)
    figures = estimate_run(input, out=out, **options)
    if as_json:
        emit(figures)
        return
    for line in report(figures):
        say(line)


def _usd(value: float | None) -> str:
    return "-" if value is None else f"${value:,.4f}"


def _row(name: str, r: dict[str, Any]) -> list[str]:
    cost, expected = r.get("cost") or {}, r.get("expected") or {}
    out = expected.get("tokens_out")
    return [name, r.get("model", ""), f"{r['calls']:,}", f"{r['tokens_in']:,}", f"{r['tokens_out_max']:,}",
            "-" if out is None else f"{out:,}", _usd(cost.get("standard")), _usd(cost.get("batch")),
            _usd(cost.get("fewshot_0"))]


def report(figures: dict[str, Any]) -> list[str]:
    """The human form: a line on the records, a table per role with the totals, a line per caveat."""
    rec = figures["records"]
    rows = [list(COLUMNS), *(_row(role, r) for role, r in figures["roles"].items()),
            _row("total", figures["total"])]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = [f"{figures['input']}: {rec['to_run']} of {rec['input']} records to run into {figures['out']} "
             "(no model was called)"]
    lines += ["  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip()
              for row in rows]
    expected = (figures["total"].get("expected") or {}).get("cost")
    if expected is not None:
        lines.append(f"expected cost (tokens per call as already seen): {_usd(expected)}")
    lines += [f"note: {n}" for n in figures["notes"]]
    return lines


def _signature() -> inspect.Signature:
    """`cai run`'s parameters, less --quiet, with --json printing the figures."""
    sig = signature()
    params = [p for p in sig.parameters.values() if p.name != "quiet"]
    json_opt = typer.Option("--json", help="Print every figure as JSON to stdout.")
    params = [p.replace(annotation=Annotated[bool, json_opt]) if p.name == "as_json" else p for p in params]
    return sig.replace(parameters=params)


estimate.__signature__ = _signature()  # type: ignore[attr-defined]
