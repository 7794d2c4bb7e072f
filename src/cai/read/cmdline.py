"""Command lines a user can copy and paste: resume and retry commands, and the one-line run summary."""

from __future__ import annotations

import shlex
from typing import Any

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


def retry_command(argv: list[str]) -> str:
    """The invocation with `--retry-failed` once."""
    return f"{resume_command(argv)} --retry-failed"


def _plural(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def summary_line(manifest: dict[str, Any]) -> str:
    """`wrote runs/x/: …` with counts, failures, retries, 429s, unparsed verdicts, tokens, time and cost."""
    ex, inv, rec = manifest["exports"], manifest["this_invocation"], manifest["records"]
    tokens = sum(t["tokens_in"] + t["tokens_out"] for t in manifest["tokens"].values())
    parts = [f"wrote {manifest['out']}/: {kept_text(ex, manifest.get('quality'))}, {ex['critiques']} critiques",
             f"{rec.get('done', 0)} done, {rec.get('failed', 0)} failed",
             f"{_plural(inv['calls'], 'call', 'calls')} ({inv['cached']} cached"
             + (f", {inv['shared_cache_hits']} from --cache" if inv.get("shared_cache_hits") else "") + "), "
             f"{_plural(inv['retries'], 'retry', 'retries')}, {inv.get('rate_limited', 0)} rate-limited (429)",
             _plural(manifest.get("unparsed_verdicts", 0), "unparsed verdict", "unparsed verdicts"),
             f"{tokens} tokens, {inv['elapsed_s']:.1f}s"]
    cost = inv.get("estimated_cost_usd")
    if cost:
        parts[-1] += f", ~${cost:.4f}"
    return "; ".join(parts)
