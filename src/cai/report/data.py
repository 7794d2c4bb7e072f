"""What a report shows, read from a run folder: the overview numbers and one compact row per record.

The per-record rows come from one pass over a read-only snapshot of the store (the same `cai.results`
helpers the exports and `Run` tables use), so a report can be made while `cai run` writes the folder.
Statistics per principle and per round come from `cai.explore`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cai import explore
from cai.errors import CaiError
from cai.export import run_settings
from cai.prices import call_price, cost, load_prices
from cai.results import draft_and_final, prompt_text, record_rows
from cai.settings import RunSettings
from cai.store import Store

if TYPE_CHECKING:
    import pandas as pd

    from cai.runfolder import Run


@dataclass
class Grade:
    """A graded response (rule-based rewards): its reward and response type."""

    reward: float
    response_type: str | None


@dataclass
class ReportData:
    """Everything the page and the plots need, gathered once."""

    name: str
    manifest: dict[str, Any]
    status: dict[str, Any]
    overview: dict[str, Any]
    #: compact rows for the page's script (see `record_row`)
    records: list[dict[str, Any]]
    #: principle ids in the order the records' `c[i][1]` index them
    principles: list[str]
    #: (draft length, final length) in characters, for records with both
    lengths: list[tuple[int, int]] = field(default_factory=list)
    #: (response type, draft reward, final reward) per graded record
    rewards: list[tuple[str, float, float]] = field(default_factory=list)
    #: reward_chosen - reward_rejected of each exported pair that carries rewards
    pair_reward_changes: list[float] = field(default_factory=list)
    #: (round, severity or None for an unparsed verdict) per critique
    severities: list[tuple[int, int | None]] = field(default_factory=list)
    principle_stats: pd.DataFrame | None = None
    rounds: pd.DataFrame | None = None
    summary: pd.DataFrame | None = None


def _num(x: Any) -> float | None:
    """A finite float, or None (NaN, None, not a number)."""
    try:
        f = float(x)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def role_costs(manifest: dict[str, Any], tokens: dict[str, dict[str, int]]) -> dict[str, float | None]:
    """USD per role by the run's price table (None where the model has no price or the table is gone), cached
    and cache-write prompt tokens at their prices, the calls sent through a batch API (the manifest's
    `tokens_batch`) at the batch price: the same sums as the manifest's `estimated_cost_usd`."""
    try:
        path = RunSettings.from_stored(manifest["settings"]).execution.prices if manifest.get("settings") else None
        prices = load_prices(path)
    except (CaiError, ValueError, KeyError, TypeError):
        return {role: None for role in tokens}
    out: dict[str, float | None] = {}
    for role, t in tokens.items():
        spec = (manifest.get("models") or {}).get(role, "")
        rates, batch_rates = call_price(spec, prices), call_price(spec, prices, batch=True)
        if rates is None or batch_rates is None:
            out[role] = None
            continue
        b = (manifest.get("tokens_batch") or {}).get(role) or {}
        standard = {k: v - b.get(k, 0) for k, v in t.items() if isinstance(v, int)}
        out[role] = cost(standard, rates) + (cost(b, batch_rates) if b else 0.0)
    return out


def overview(manifest: dict[str, Any], status: dict[str, Any]) -> dict[str, Any]:
    """The overview section's facts: models, constitution, record counts, tokens and cost per role, cache."""
    tokens = manifest.get("tokens") or status.get("tokens") or {}
    costs = role_costs(manifest, tokens)
    cache = manifest.get("call_cache") or {}
    return {
        "models": manifest.get("models") or {}, "base_urls": manifest.get("base_urls") or {},
        "constitution": manifest.get("constitution") or {}, "records": status["records"],
        "running_pid": status.get("running_pid"),
        "tokens": {role: {**t, "cost_usd": costs.get(role)} for role, t in tokens.items()},
        "estimated_cost_usd": manifest.get("estimated_cost_usd"), "wall_seconds": manifest.get("wall_seconds"),
        "started": manifest.get("started"), "ended": manifest.get("ended"),
        "invocations": manifest.get("invocations"), "cai_version": manifest.get("cai_version"),
        "exports": manifest.get("exports") or {}, "unparsed_verdicts": manifest.get("unparsed_verdicts"),
        "errors_open": status.get("errors_open"),
        "call_cache": cache if cache.get("hits") else None,
        "refusal_metrics": manifest.get("refusal_metrics"),
    }


def _grades(steps: list[dict[str, Any]]) -> dict[int, Grade]:
    out = {}
    for s in steps:
        if s["kind"] == "grade" and isinstance(s.get("score"), dict) and _num(s["score"].get("reward")) is not None:
            out[s["round"]] = Grade(float(s["score"]["reward"]), s["score"].get("response_type"))
    return out


def record_row(rec: dict[str, Any], principle_index: dict[str, int], error: str | None) -> dict[str, Any]:
    """One record for the page: id, s (status), p (prompt), ctx (earlier turns), d (draft), x (expected),
    t (response type), e (open error), g (reward by round), c (critiques: [round, principle index,
    violates 1/0/None for unparsed, severity, critique text, revised response or None, before if it is not
    the previous response]). Each text appears once: a round's `before` is the previous round's response."""
    steps = rec["steps"]
    draft, _ = draft_and_final(steps)
    revisions = {s["round"]: s for s in steps if s["kind"] == "revise"}
    crits, current = [], draft
    for s in steps:
        if s["kind"] != "critique":
            continue
        v = s.get("verdict")
        rev = revisions.get(s["round"])
        row: list[Any] = [s["round"], principle_index.setdefault(s["principle"], len(principle_index)),
                          None if v is None else int(bool(v["violates"])), None if v is None else v["severity"],
                          s["critique"], None if rev is None else rev["response"]]
        if s["response"] != current:
            row.append(s["response"])
        crits.append(row)
        current = rev["response"] if rev is not None else s["response"]
    out: dict[str, Any] = {"id": rec["id"], "s": rec["status"], "p": prompt_text(rec["messages"]),
                           "d": draft, "c": crits}
    last_user = max((i for i, m in enumerate(rec["messages"]) if m["role"] == "user"), default=None)
    ctx = [[m["role"], m["content"]] for i, m in enumerate(rec["messages"]) if i != last_user]
    if ctx:
        out["ctx"] = ctx
    extra = rec.get("extra") or {}
    if extra.get("expected") is not None:
        out["x"] = str(extra["expected"])
    grades = _grades(steps)
    if grades:
        out["g"] = {str(r): g.reward for r, g in sorted(grades.items())}
        out["t"] = grades[min(grades)].response_type
    if error:
        out["e"] = error
    return out


def gather(run: Run) -> ReportData:
    """Read the run once for the per-record rows and the plots' series; cai.explore for the statistics."""
    manifest, status = run.manifest, run.status()
    data = ReportData(name=run.path.resolve().name, manifest=manifest, status=status,
                      overview=overview(manifest, status), records=[], principles=[])
    index: dict[str, int] = {}
    store = Store.open_run(run.path, readonly=True)
    try:
        margin = run_settings(store).export.min_reward_margin
        errors: dict[str, str] = {}
        for e in store.errors(open_only=True):
            errors[e["id"]] = f"{e['stage']}: {e['error_class']}: {e['message']}"
        for rec in store.iter_records():
            data.records.append(record_row(rec, index, errors.get(rec["id"]) if rec["status"] != "done" else None))
            _series(data, rec, margin)
    finally:
        store.close()
    data.principles = sorted(index, key=index.__getitem__)
    data.principle_stats = explore.principle_stats(run)
    data.rounds = explore.rounds(run)
    data.summary = explore.summary(run)
    return data


def _series(data: ReportData, rec: dict[str, Any], margin: float | None) -> None:
    """Add one record's lengths, rewards, pair reward change and severities to the plots' series."""
    steps = rec["steps"]
    for s in steps:
        if s["kind"] == "critique":
            v = s.get("verdict")
            data.severities.append((s["round"], None if v is None else int(v["severity"])))
    if rec["status"] != "done":
        return
    draft, final = draft_and_final(steps)
    if draft is not None and final is not None:
        data.lengths.append((len(draft), len(final)))
    grades = _grades(steps)
    if 0 in grades and len(grades) > 1:
        first, last = grades[0], grades[max(grades)]
        data.rewards.append((first.response_type or "unknown", first.reward, last.reward))
    _, pair, _, _ = record_rows(rec, margin)
    if pair is not None and "reward_chosen" in pair:
        data.pair_reward_changes.append(float(pair["reward_chosen"]) - float(pair["reward_rejected"]))
