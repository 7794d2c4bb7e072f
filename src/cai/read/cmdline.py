"""Command lines a user can copy and paste: resume and retry commands, and the one-line run summary."""

from __future__ import annotations

import shlex
from typing import Any

from cai.read.decisions import reviewed_text
from cai.read.quality import kept_text
from cai.redact import redact

# Options that must not be repeated when a run is resumed (they would move the run aside, or retry only).
_NOT_ON_RESUME = ("--restart", "--retry-failed", "--no-retry-failed")


def quote(arg: str) -> str:
    return shlex.quote(arg)


def resume_command(argv: list[str]) -> str:
    """The invocation without `--restart` (resuming must not move the run aside), runnable as typed once any
    credential in it is filled in again: API keys and URL credentials are printed as *** (`cai.redact`)."""
    return shlex.join(redact(a) for a in argv if a not in _NOT_ON_RESUME)


def with_option(command: str, flag: str, value: str) -> str:
    """`command` (a shell line) with `flag` given `value`: an earlier `flag X` or `flag=X` is replaced."""
    words, out, skip = shlex.split(command), [], False
    for w in words:
        if skip:
            skip = False
        elif w == flag:
            skip = True
        elif not w.startswith(flag + "="):
            out.append(w)
    return shlex.join([*out, flag, value])


def budget_text(budget: dict[str, Any]) -> str:
    """`$1.2345 spent of $5.0000 (--max-cost), $0.0400 reserved by calls in flight` from a `budget` section."""
    spent, limit = budget.get("spent_usd"), budget.get("max_cost_usd")
    text = ("unknown" if spent is None else f"${spent:.4f}") + " spent"
    text += f" of ${limit:.4f} (--max-cost)" if limit is not None else ""
    if budget.get("reserved_usd"):
        text += f", ${budget['reserved_usd']:.4f} reserved by calls in flight"
    if budget.get("lost_usd"):
        text += f" (${budget['lost_usd']:.4f} of it for calls a kill cut off)"
    return text


def retry_command(argv: list[str]) -> str:
    """The invocation with `--retry-failed` once."""
    return f"{resume_command(argv)} --retry-failed"


def _plural(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def run_summary(manifest: dict[str, Any]) -> dict[str, Any]:
    """The figures of `cai run`'s closing line, from its manifest (with `out` and `this_invocation`): what the run
    folder holds now (exports, records, unparsed verdicts) and what this invocation did (calls, tokens, time,
    cost). A zero-call resume reports 0 calls and 0 tokens, not the run's totals."""
    ex, inv, rec = manifest["exports"], manifest["this_invocation"], manifest["records"]
    return {
        "out": manifest["out"],
        "exports": dict(ex),
        "quality": manifest.get("quality"),
        "reviews": manifest.get("reviews"),
        "records": {"done": rec.get("done", 0), "failed": rec.get("failed", 0)},
        "unparsed_verdicts": manifest.get("unparsed_verdicts", 0),
        "this_invocation": {
            "calls": inv["calls"], "cached": inv["cached"], "shared_cache_hits": inv.get("shared_cache_hits", 0),
            "retries": inv["retries"], "rate_limited": inv.get("rate_limited", 0),
            "tokens": inv.get("tokens_in", 0) + inv.get("tokens_out", 0), "elapsed_s": inv["elapsed_s"],
            "estimated_cost_usd": inv.get("estimated_cost_usd")},
    }


def summary_line(summary: dict[str, Any]) -> str:
    """`wrote runs/x/: …`: the run's exports (what was kept and kept out, `kept_text`), records and unparsed
    verdicts, then this invocation's calls, retries, 429s, tokens, time and cost (`run_summary` gives them)."""
    ex, rec, inv = summary["exports"], summary["records"], summary["this_invocation"]
    shared = f", {inv['shared_cache_hits']} from --cache" if inv["shared_cache_hits"] else ""
    cost = f", ~${inv['estimated_cost_usd']:.4f}" if inv["estimated_cost_usd"] else ""
    return "; ".join([
        f"wrote {summary['out']}/: {kept_text(ex, summary.get('quality'))}, {ex['critiques']} critiques"
        + reviewed_text(summary.get("reviews")),
        f"{rec['done']} done, {rec['failed']} failed",
        _plural(summary["unparsed_verdicts"], "unparsed verdict", "unparsed verdicts"),
        f"this invocation: {_plural(inv['calls'], 'call', 'calls')} ({inv['cached']} cached{shared}), "
        f"{_plural(inv['retries'], 'retry', 'retries')}, {inv['rate_limited']} rate-limited (429), "
        f"{inv['tokens']} tokens, {inv['elapsed_s']:.1f}s{cost}"])


def gate_hint(manifest: dict[str, Any]) -> str | None:
    """A line for a run whose quality gate kept out every row it looked at (e.g. the embedded model's replies,
    cut off at a small --max-tokens), saying how to see them; None otherwise."""
    quality = manifest.get("quality") or {}
    looked = [quality[p] for p in ("pairs", "sft") if p in quality]
    if not looked or quality.get("gate") == "off" or any(p["kept"] for p in looked):
        return None
    return ("the quality gate kept out every row; the summary says why. Add --quality-gate off to write them "
            "with their flags (no model call), or see docs/export.md")
