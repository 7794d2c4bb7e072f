"""What a report shows, read from a run folder: the overview numbers and one compact row per record.

Everything comes from one pass over a read-only snapshot of the store (`cai.read.rows.run_rows`, the rows the
exports and `Run` tables are made of), so a report can be made while `cai run` writes the folder. Statistics
per principle and per round are `cai.read.explore.CritiqueStats` fed in that pass; those of AI preference labels
(`LabelStats`) come from the same comparison rows as `Run.labels()` and labels.jsonl.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from cai.calls import prompt_text
from cai.core.choice import leaning
from cai.core.prices import call_price, cost, load_prices
from cai.errors import CaiError
from cai.read import explore
from cai.read.export import run_settings
from cai.read.quality import Tally
from cai.read.reviews import StatsInputs
from cai.read.rows import RecordRows, RowOptions, run_rows
from cai.report.quality import QualityStats
from cai.report.review import ReviewView, review_view
from cai.settings import LabelSettings, RunSettings
from cai.store import Store
from cai.store.steps import Kind, StoredRecord

if TYPE_CHECKING:
    import pandas as pd

    from cai.read.run import Run


@dataclass
class Grade:
    """A graded response (rule-based rewards): its reward and response type."""

    reward: float
    response_type: str | None


@dataclass
class LabelStats:
    """AI preference labels of the done records, from their comparison rows (`cai.read.rows.label_rows`)."""

    comparisons: int
    records: int  # done records with at least one comparison
    judges: list[str]
    #: |p − 0.5| per comparison: 0 = undecided, 0.5 = certain
    confidences: list[float]
    #: single-order asks (two per comparison) whose first-shown option won, lost, or neither (`leaning` of P(A))
    first_wins: int
    second_wins: int
    ties: int
    #: comparisons whose two orders picked the same position (both the first-shown or both the second-shown)
    disagreements: int
    methods: dict[str, int]
    #: principle → [comparisons, mean confidence, share of its asks won by the first-shown option], most used first
    principles: dict[str, list[Any]]
    pairs: int  # AI-labeled pairs kept under the run's --min-margin and --rank-by
    near_ties: int
    min_margin: float
    rank_by: str

    @property
    def asks(self) -> int:
        return 2 * self.comparisons

    @property
    def mean_confidence(self) -> float:
        return sum(self.confidences) / len(self.confidences)

    @property
    def first_share(self) -> float:
        """Share of single-order asks where the option shown first won (0.5 = no position bias)."""
        return self.first_wins / self.asks

    @property
    def disagreement_share(self) -> float:
        return self.disagreements / self.comparisons


def label_stats(rows: list[dict[str, Any]], pairs: int = 0, near_ties: int = 0,
                settings: LabelSettings | None = None) -> LabelStats | None:
    """The statistics of comparison rows (`cai.read.rows.LabelRows.comparisons`, `Run.labels()` rows); None for
    no rows."""
    if not rows:
        return None
    settings = settings or LabelSettings()
    first = sum((leaning(r["p_ab"]) > 0) + (leaning(r["p_ba"]) > 0) for r in rows)
    second = sum((leaning(r["p_ab"]) < 0) + (leaning(r["p_ba"]) < 0) for r in rows)
    by_principle: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_principle.setdefault(str(r["principle"]), []).append(r)
    principles = {
        name: [len(rs), sum(abs(r["p"] - 0.5) for r in rs) / len(rs),
               sum((leaning(r["p_ab"]) > 0) + (leaning(r["p_ba"]) > 0) for r in rs) / (2 * len(rs))]
        for name, rs in sorted(by_principle.items(), key=lambda kv: (-len(kv[1]), kv[0]))}
    return LabelStats(
        comparisons=len(rows), records=len({r["id"] for r in rows}),
        judges=sorted({str(r["judge"]) for r in rows if r.get("judge") is not None}),
        confidences=[abs(r["p"] - 0.5) for r in rows], first_wins=first, second_wins=second,
        ties=2 * len(rows) - first - second,
        disagreements=sum(leaning(r["p_ab"]) == leaning(r["p_ba"]) != 0 for r in rows),
        methods=dict(Counter(str(r["method"]) for r in rows).most_common()), principles=principles,
        pairs=pairs, near_ties=near_ties, min_margin=settings.min_margin, rank_by=settings.rank_by)


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
    #: AI preference labels (runs with --candidates K); None when the run has no comparison
    labels: LabelStats | None = None
    quality: QualityStats | None = None
    #: people's review decisions: what the last export did with them, and the agreement figures
    review: ReviewView | None = None
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
        "model_files": manifest.get("model_files") or {},
        "constitution": manifest.get("constitution") or {}, "records": status["records"],
        "running_pid": status.get("running_pid"),
        "tokens": {role: {**t, "cost_usd": costs.get(role)} for role, t in tokens.items()},
        "estimated_cost_usd": manifest.get("estimated_cost_usd"), "wall_seconds": manifest.get("wall_seconds"),
        "budget": status.get("budget"),
        "started": manifest.get("started"), "ended": manifest.get("ended"),
        "invocations": manifest.get("invocations"), "cai_version": manifest.get("cai_version"),
        "exports": manifest.get("exports") or {}, "unparsed_verdicts": manifest.get("unparsed_verdicts"),
        "errors_open": status.get("errors_open"),
        "call_cache": cache if cache.get("hits") else None,
        "refusal_metrics": manifest.get("refusal_metrics"),
    }


def _grades(rec: StoredRecord) -> dict[int, Grade]:
    out = {}
    for s in rec.of(Kind.GRADE):
        if isinstance(s.score, dict) and _num(s.reward) is not None:
            out[s.round] = Grade(float(s.score["reward"]), s.score.get("response_type"))
    return out


def record_row(rows: RecordRows, principle_index: dict[str, int], error: str | None) -> dict[str, Any]:
    """One record for the page: id, s (status), p (prompt), ctx (earlier turns), d (draft), x (expected),
    t (response type), e (open error), g (reward by round), c (critiques: [round, principle index,
    violates 1/0/None for unparsed, severity, critique text, revised response or None, before if it is not
    the previous response]). Each text appears once: a round's `before` is the previous round's response."""
    rec, draft = rows.record, rows.draft
    crits, current = [], draft
    for c in rows.critiques:
        s, v, rev = c.step, c.step.verdict, c.revision
        row: list[Any] = [s.round, principle_index.setdefault(s.data["principle"], len(principle_index)),
                          None if v is None else int(bool(v["violates"])), None if v is None else v["severity"],
                          s.data["critique"], None if rev is None else rev.response]
        if s.response != current:
            row.append(s.response)
        crits.append(row)
        current = rev.response if rev is not None else s.response
    out: dict[str, Any] = {"id": rec.id, "s": rec.status, "p": prompt_text(rec.messages), "d": draft, "c": crits}
    last_user = max((i for i, m in enumerate(rec.messages) if m["role"] == "user"), default=None)
    ctx = [[m["role"], m["content"]] for i, m in enumerate(rec.messages) if i != last_user]
    if ctx:
        out["ctx"] = ctx
    extra = rec.extra or {}
    if extra.get("expected") is not None:
        out["x"] = str(extra["expected"])
    grades = _grades(rec)
    if grades:
        out["g"] = {str(r): g.reward for r, g in sorted(grades.items())}
        out["t"] = grades[min(grades)].response_type
    if error:
        out["e"] = error
    return out


def gather(run: Run) -> ReportData:
    """Read the run in one pass over its store: the per-record rows, the plots' series, the label statistics
    and the per-principle and per-round statistics (`cai.read.explore.CritiqueStats`)."""
    manifest, status = run.manifest, run.status()
    data = ReportData(name=run.path.resolve().name, manifest=manifest, status=status,
                      overview=overview(manifest, status), records=[], principles=[])
    index: dict[str, int] = {}
    store = Store.open_run(run.path, readonly=True)
    comparisons: list[dict[str, Any]] = []
    ai_pairs = near_ties = 0
    stats = explore.CritiqueStats()
    try:
        settings = run_settings(store)
        data.quality = QualityStats(Tally(settings.export.quality_gate))
        lab = settings.labels or LabelSettings()
        # labels of every done record (as Run.labels() and the exports), with the run's label settings
        opts = replace(RowOptions.of_run(store, settings, developer_as_system=False, reviews="ignore"), labels=lab)
        review_inputs = StatsInputs()  # people's decisions are measured against the rows as the models made them
        errors: dict[str, str] = {}
        for e in store.errors(open_only=True):
            errors[e["id"]] = f"{e['stage']}: {e['error_class']}: {e['message']}"
        for rows in run_rows(store, opts, done_only=False):
            rec = rows.record
            data.records.append(record_row(rows, index, errors.get(rec.id) if not rec.done else None))
            _series(data, rows)
            stats.add(rows)
            review_inputs.add(rows)
            if rec.done:
                data.quality.add(rows)
            if rows.labels is not None:
                comparisons += rows.labels.comparisons
                ai_pairs += len(rows.labels.pairs)
                near_ties += rows.labels.near_ties
    finally:
        store.close()
    data.labels = label_stats(comparisons, ai_pairs, near_ties, lab)
    data.principles = sorted(index, key=index.__getitem__)
    data.principle_stats = stats.principles(run.constitution())
    data.rounds = stats.rounds()
    data.summary = explore.summary(run)
    data.review = review_view(manifest.get("reviews"), review_inputs.stats(run.path))
    return data


def _series(data: ReportData, rows: RecordRows) -> None:
    """Add one record's lengths, rewards, pair reward change and severities to the plots' series."""
    for c in rows.critiques:
        v = c.step.verdict
        data.severities.append((c.step.round, None if v is None else int(v["severity"])))
    if not rows.record.done:
        return
    if rows.draft is not None and rows.final is not None:
        data.lengths.append((len(rows.draft), len(rows.final)))
    grades = _grades(rows.record)
    if 0 in grades and len(grades) > 1:
        first, last = grades[0], grades[max(grades)]
        data.rewards.append((first.response_type or "unknown", first.reward, last.reward))
    pair = rows.pair
    if pair is not None and "reward_chosen" in pair:
        data.pair_reward_changes.append(float(pair["reward_chosen"]) - float(pair["reward_rejected"]))
