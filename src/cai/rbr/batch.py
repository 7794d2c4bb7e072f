"""Grade many rows with one model: a store folder keeping its calls (set up by `cai.runs.role_session`, as
for a run), an engine, rows in flight.

A graded row is the input row (see `cai.rbr.data`) plus the `score_response` dict, plus
`gold_class` (the class the human labels give) when the row has labels.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cai.constitution import Constitution
from cai.core.engine import Engine
from cai.errors import InputError
from cai.rbr.reward import Weights
from cai.rbr.rules import classify
from cai.rbr.score import score_response
from cai.runs import role_session

ROLE = "grader"


def default_out(target: Path) -> Path:
    """`runs/rbr-<input stem>` (for a run folder, its name)."""
    return Path("runs") / f"rbr-{target.stem if target.suffix else target.name}"


async def grade_rows(engine: Engine, const: Constitution, weights: Weights, rows: list[dict[str, Any]], *,
                     mode: str = "separate", votes: int = 3, concurrency: int = 4, role: str = ROLE,
                     on_done: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Score every row (at most `concurrency` rows in flight); results in input order.

    `on_done("done")` is called as each row finishes (the signature of `Progress.record_done`).
    """
    sem = asyncio.Semaphore(concurrency)

    async def one(row: dict[str, Any]) -> dict[str, Any]:
        async with sem:
            score = await score_response(engine, role, const, weights, row["prompt"], row["response"],
                                         row.get("response_type"), mode=mode, votes=votes)
        out = {k: v for k, v in row.items() if v is not None}
        out.update(score)
        labels = row.get("labels")
        if labels and score["response_type"] in const.response_types:
            out["gold_class"] = classify(const.response_types[score["response_type"]], labels)
        if on_done:
            on_done("done")
        return out

    return list(await asyncio.gather(*(one(r) for r in rows)))


async def run_grading(rows: list[dict[str, Any]], *, out: Path, model: str, base_url: str | None,
                      const: Constitution, weights: Weights, mode: str, votes: int, concurrency: int = 4,
                      max_retries: int = 5, cache: str | None = None, max_cost: float | None = None,
                      prices: str | None = None,
                      on_start: Callable[[int, Engine], None] | None = None,
                      on_done: Callable[[str], None] | None = None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Grade `rows` with `model`, its calls kept in the store at `out` (set up as `cai run` sets up a run
    folder: the run lock, a damaged store refused; `cache` is a shared call cache). Returns (graded rows, stats).

    `max_cost`: a budget over everything the store folder has spent (BudgetExhausted once the next call does not
    fit; the calls made are kept). `on_start(rows, engine)` is called before the first call. Cancelling the task
    abandons the calls in flight; every finished call is kept in the store.
    """
    for r in rows:
        rt = r.get("response_type")
        if rt is not None and rt not in const.response_types:
            raise InputError(f"row {r['id']}: unknown response type {rt!r} (constitution {const.name} has: "
                             f"{', '.join(const.response_types)})")
    started = time.monotonic()
    async with role_session(out, ROLE, model, base_url, concurrency=concurrency, max_retries=max_retries,
                            cache=cache, max_cost=max_cost, prices=prices) as session:
        grader = session.models[ROLE]
        if grader.provider == "local":
            # One response at a time: its questions share the response's prompt prefix (kept in the KV cache on
            # the single-sequence path, evaluated once and copied between slots in the batched engine).
            concurrency = 1
        session.store.set_meta("rbr", {"model": grader.spec, "constitution": const.name, "sha256": const.sha256,
                                       "mode": mode, "votes": votes})
        if on_start:
            on_start(len(rows), session.engine)
        graded = await grade_rows(session.engine, const, weights, rows, mode=mode, votes=votes,
                                  concurrency=concurrency, on_done=on_done)
    st = session.engine.stats.role(ROLE)
    n = max(len(graded), 1)
    per = {k: round(sum(g["usage"][k] for g in graded) / n, 1) for k in ("calls", "tokens_in", "tokens_out")}
    stats = {"rows": len(graded), "mode": mode, "model": grader.spec, "store": str(out),
             "calls_made": st.calls, "calls_cached": st.cached, "calls_shared": st.shared,
             "tokens_in": st.tokens_in, "tokens_out": st.tokens_out, "per_response": per,
             "elapsed_s": round(time.monotonic() - started, 2)}
    return graded, stats
