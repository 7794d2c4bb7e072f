"""`cai label` and `cai judge-eval`: the labeler over an existing run, over a file of candidates, and against
known preferences. All calls go through an engine over a store folder (set up as for a run: the run lock, a
damaged store refused), so they are cached and a repeated command makes no new calls."""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

from cai import constitution as constitution_mod
from cai.core.choice import leaning
from cai.labels.files import read_candidates, read_pairs
from cai.labels.labeler import ROLE, AILabeler
from cai.read.export import ManifestExtra, Sink, all_or_none, export_run, run_settings
from cai.read.rows import RowOptions, label_rows
from cai.runs import role_session
from cai.settings import LabelSettings
from cai.store import Store
from cai.store.steps import Kind, Step, StoredRecord

T = TypeVar("T")


async def _bounded(items: Iterable[T], limit: int, fn: Callable[[T], Awaitable[Any]]) -> list[Any]:
    sem = asyncio.Semaphore(limit)

    async def one(item: T) -> Any:
        async with sem:
            return await fn(item)

    return list(await asyncio.gather(*(one(i) for i in items)))


def run_candidates(steps: list[Step]) -> list[dict[str, Any]]:
    """A stored record's candidates: its draft, its sampled candidates and its revisions, each text once, with
    their rule-based reward when the run has one (`grade` steps, a candidate's own `score`)."""
    out: dict[str, dict[str, Any]] = {}
    named = {Kind.DRAFT: "draft", Kind.CANDIDATE: "sample", Kind.REVISE: "revision"}
    rewards = {s.round: s.reward for s in steps if s.kind is Kind.GRADE}
    for s in sorted(steps, key=lambda s: (list(named).index(s.kind) if s.kind in named else 9, s.round)):
        if s.kind in named and s.response:
            cand = {"source": named[s.kind], "n": s.round, "response": s.response}
            reward = s.reward if s.kind is Kind.CANDIDATE else rewards.get(s.round)
            if reward is not None:
                cand["reward"] = reward
            out.setdefault(s.response, cand)
    return list(out.values())


async def label_run(run_dir: Path, labels: LabelSettings, *, base_url: str | None = None, concurrency: int = 4,
                    max_retries: int = 5, extras: Iterable[ManifestExtra] = (),
                    max_cost: float | None = None) -> dict[str, Any]:
    """Label every done record's candidates (`run_candidates`) of the run in `run_dir`, store the label steps,
    keep `labels` in the run's settings and export again; returns the manifest. `max_cost`: a budget over
    everything the run folder has spent (BudgetExhausted once the next call does not fit; what is stored is
    kept)."""
    probe = Store.open_run(run_dir, readonly=True)
    settings = run_settings(probe)
    probe.close()
    const = constitution_mod.load(settings.loop.constitution)
    judge = labels.judge or settings.models.critic
    labeler = AILabeler(labels, judge, const)
    async with role_session(run_dir, ROLE, judge, base_url or settings.models.base_url, concurrency=concurrency,
                            max_retries=max_retries, create=False, max_cost=max_cost,
                            prices=settings.execution.prices) as session:
        store, engine = session.store, session.engine
        records = [r for r in store.iter_records() if r.done]

        async def one(rec: StoredRecord) -> None:
            cands = run_candidates(rec.steps)
            if len(cands) >= 2:
                data = await labeler.label(engine, rec.messages, cands, settings.generation.seed)
                seq = max((s.seq for s in rec.steps), default=-1) + 1
                store.add_step(rec.id, seq, Kind.LABEL, 0, data)

        await _bounded(records, concurrency, one)
        await store.flush()
        stored = store.get_meta("settings") or {}
        store.set_meta("settings", {**stored, "labels": labels.model_copy(update={"judge": judge}).model_dump()})
        return await asyncio.to_thread(export_run, store, settings.export.format, extras=tuple(extras))


async def label_file(path: Path, out: Path, labels: LabelSettings, judge: str, *, constitution: str = "default",
                     base_url: str | None = None, concurrency: int = 4, max_retries: int = 5,
                     max_cost: float | None = None) -> dict[str, Any]:
    """Label the candidates of each row of `path` (`cai.labels.files`); write `labels.jsonl` (every comparison)
    and `pairs.jsonl` (TRL preference pairs above `min_margin`) into `out`, which also keeps the calls."""
    rows = read_candidates(path)
    const = constitution_mod.load(constitution)
    labeler = AILabeler(labels, judge, const)
    async with role_session(out, ROLE, judge, base_url, concurrency=concurrency,
                            max_retries=max_retries, max_cost=max_cost) as session:
        async def one(row: dict[str, Any]) -> StoredRecord:
            cands = [{"source": "response", "n": i, "response": t} for i, t in enumerate(row["responses"])]
            data = await labeler.label(session.engine, row["prompt"], cands, 0)
            return StoredRecord(0, row["id"], row["prompt"], {}, "done", [Step(0, Kind.LABEL, 0, data)])

        recs = await _bounded(rows, concurrency, one)
        stats = session.engine.stats.role(ROLE)
    near = 0
    with all_or_none({}) as sinks:
        for name in ("pairs", "labels"):
            sinks[name] = Sink(out / f"{name}.jsonl")
        for rec in recs:
            got = label_rows(rec, RowOptions(labels=labels))
            near += got.near_ties
            for row in got.pairs:
                sinks["pairs"].add(row)
            for row in got.comparisons:
                sinks["labels"].add(row)
    return {"rows": len(rows), "comparisons": sinks["labels"].count, "pairs": sinks["pairs"].count,
            "near_ties": near, "judge": judge, "out": str(out), "calls_made": stats.calls,
            "calls_cached": stats.cached}


def agreement(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Judge agreement with known preferences: p = P(chosen ≻ rejected) per row (0.5: undecided), overall and
    per section/tag; position bias: how often the option shown first won a single-order ask, and how often
    the two orders disagreed (both picked the same position, so the judge's pick followed the order)."""
    decided = [r for r in results if leaning(r["p"])]
    asks = [p for r in results for p in (r["p_ab"], r["p_ba"]) if leaning(p)]
    both = [r for r in results if leaning(r["p_ab"]) and leaning(r["p_ba"])]
    by_tag: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in results:
        for tag in dict.fromkeys(r["tags"]):
            by_tag[tag].append(r)

    def agree(rows: list[dict[str, Any]]) -> float | None:
        rows = [r for r in rows if leaning(r["p"])]
        return round(sum(leaning(r["p"]) > 0 for r in rows) / len(rows), 4) if rows else None

    return {
        "pairs": len(results), "decided": len(decided), "undecided": len(results) - len(decided),
        "agreement": agree(results),
        "by_tag": {t: {"pairs": len(rs), "agreement": agree(rs)} for t, rs in sorted(by_tag.items())},
        "position_bias": {
            "first_shown_wins": round(sum(leaning(p) > 0 for p in asks) / len(asks), 4) if asks else None,
            "orders_disagree": round(sum(leaning(r["p_ab"]) == leaning(r["p_ba"]) for r in both) / len(both), 4)
            if both else None},
        "mean_confidence": round(sum(abs(r["p"] - 0.5) for r in results) / len(results), 4) if results else None,
        "methods": dict(Counter(r["method"] for r in results)),
    }


async def judge_eval(path: Path, out: Path, judge: str, labels: LabelSettings, *, constitution: str = "default",
                     base_url: str | None = None, concurrency: int = 4, max_retries: int = 5,
                     limit: int | None = None) -> dict[str, Any]:
    """Judge each row's chosen vs rejected (both orders, as labeling does) and measure `agreement`."""
    rows = list(itertools.islice(read_pairs(path), limit))
    const = constitution_mod.load(constitution)
    labeler = AILabeler(labels, judge, const)
    async with role_session(out, ROLE, judge, base_url, concurrency=concurrency,
                            max_retries=max_retries) as session:
        async def one(row: dict[str, Any]) -> dict[str, Any]:
            c = await labeler.compare(session.engine, row["prompt"], row["chosen"], row["rejected"], (0, 1), 0)
            return {"id": row["id"], "tags": row["tags"], **c}

        results = await _bounded(rows, concurrency, one)
        stats = session.engine.stats.role(ROLE)
    return {"file": str(path), "judge": judge, "cot": labels.cot, **agreement(results),
            "calls_made": stats.calls, "calls_cached": stats.cached, "rows": results}
