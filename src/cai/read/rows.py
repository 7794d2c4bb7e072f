"""A run's records as rows: the one read model of the exports (JSONL, Parquet, the Hugging Face folder), the
`Run` tables, `cai.read.explore` and the report.

`run_rows` reads the store once, a record at a time, and gives each record's `RecordRows`: its sft row, its
revision pair (or why it was dropped), its critiques (each with the revision that answered it), its rewards,
and, in a run with AI preference labels, its AI-labeled pairs above the margin (`kept_pairs`, the one place
the margin cut is made), its comparisons and its near-ties. The columns of every export are declared here
(`columns`); `cai.read.parquet` gives them their types, and `frame` makes a DataFrame of rows.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any

from cai.read import quality
from cai.read.decisions import Outcome, Reviews, ReviewTally, apply, text_hash
from cai.settings import LabelSettings, RunSettings
from cai.store.steps import Kind, Step, StoredRecord, draft_and_final, rewards_by_round

if TYPE_CHECKING:
    import pandas as pd

    from cai.store import Store


def frame(rows: list[dict[str, Any]], columns: list[str] | None) -> pd.DataFrame:
    """`rows` as a DataFrame (with `columns`, in that order, also when empty). pandas, which loads pyarrow
    (~80 MB), is imported on the first table asked for, not by every `cai run` that only gets a `Run` back."""
    import pandas as pd

    return pd.DataFrame(rows, columns=columns)


SFT_COLUMNS = ["id", "messages", "quality"]
#: `source`: revision, ai_label, human (people decided the pair) or human_edit (and corrected its better side);
#: `review`: None, or what people decided (`cai.read.decisions`)
PAIR_COLUMNS = ["id", "prompt", "chosen", "rejected", "metadata", "quality", "source", "review"]
REWARD_COLUMNS = ["reward_chosen", "reward_rejected"]  # pairs of a run with rule-based rewards
LABELED_PAIR_COLUMNS = ["score_chosen", "score_rejected", "label"]  # pairs of a run with AI labels
CRITIQUE_COLUMNS = ["id", "round", "principle", "layer", "kind", "critique", "verdict", "parsed", "rule_override",
                    "before", "after"]
#: labels.jsonl and `Run.labels()`: one row per comparison of two candidates
LABEL_COLUMNS = ["id", "a", "b", "source_a", "source_b", "response_a", "response_b", "principle", "p_ab", "p_ba",
                 "p", "method", "judge"]
#: `Run.grades()`: one row per (record, graded response, proposition or check)
GRADE_COLUMNS = ["id", "round", "step", "response_type", "kind", "name", "p_yes", "method", "score", "reward"]
DROP_REASONS = quality.REASONS  # why a done record has no revision pair (the first that applies)


def columns(export: str, rewards: bool = False, labels: bool = False) -> list[str]:
    """The columns of `export` (sft, pairs, critiques or labels); `rewards` adds the pairs' reward columns,
    `labels` (a run with AI preference labels) their score, source and label columns."""
    if export == "pairs":
        return PAIR_COLUMNS + (REWARD_COLUMNS if rewards else []) + (LABELED_PAIR_COLUMNS if labels else [])
    known = {"sft": SFT_COLUMNS, "critiques": CRITIQUE_COLUMNS, "labels": LABEL_COLUMNS}
    if export not in known:
        raise ValueError(f"unknown export {export!r}")
    return list(known[export])


def developer_as_system_turns(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    """`messages` with every `developer` turn given the `system` role (keys keep their order)."""
    return [{**m, "role": "system"} if m["role"] == "developer" else m for m in messages]


def labeled_run(store: Store, settings: RunSettings) -> bool:
    """Whether the run has AI preference labels (its settings ask for them, or a `label` step is stored)."""
    return settings.labels is not None or store.has_step(Kind.LABEL)


@dataclass(frozen=True)
class RowOptions:
    """How a run's rows are made: the `--min-reward-margin` cut of revision pairs, the label settings of a run
    with AI preference labels (None for a run without), whether developer turns are written as system, the
    `--quality-gate` level and the texts of the run's principles by id (what the gate's `leak` check looks
    for)."""

    min_reward_margin: float | None = None
    labels: LabelSettings | None = None
    developer_as_system: bool = False
    quality_gate: str = "default"
    principle_texts: dict[str, list[str]] = field(default_factory=dict)
    reviews: Reviews = field(default_factory=lambda: Reviews("ignore"))

    @classmethod
    def of_run(cls, store: Store, settings: RunSettings, developer_as_system: bool | None = None,
               reviews: str | None = None, review_policy: str | None = None, *, count_reviews: bool = True
               ) -> RowOptions:
        """The run's own options; `developer_as_system`, `reviews` (apply, only or ignore) and `review_policy`
        None: the run's settings. People's decisions are read from the run folder once, here; not at all under
        `ignore` with `count_reviews` False (a reader that neither applies nor counts them)."""
        if developer_as_system is None:
            developer_as_system = settings.export.system_role_for_developer
        labels = (settings.labels or LabelSettings()) if labeled_run(store, settings) else None
        mode, policy = reviews or settings.export.reviews, review_policy or settings.export.review_policy
        if mode == "ignore" and not count_reviews:
            decisions = Reviews(mode, policy)
        else:
            decisions = Reviews.load(store.run_dir, mode, policy)
        return cls(settings.export.min_reward_margin, labels, developer_as_system, settings.export.quality_gate,
                   store.get_meta("principle_texts", {}) or {}, decisions)


@dataclass(frozen=True)
class Critique:
    """A critique step, the revision that answered it (None: not revised), and its critiques-export row."""

    step: Step
    revision: Step | None
    row: dict[str, Any]


@dataclass
class LabelRows:
    """A record's AI-labeled pairs above the margin, its comparisons (labels-export rows) and its near-ties."""

    pairs: list[dict[str, Any]] = field(default_factory=list)
    comparisons: list[dict[str, Any]] = field(default_factory=list)
    near_ties: int = 0
    verdicts: list[tuple[str, quality.Verdict]] = field(default_factory=list)  # (pair id, verdict), kept or not
    reviewed: list[tuple[str, ...]] = field(default_factory=list)  # what people's decisions did to each pair


@dataclass
class RecordRows:
    """What one record yields (see the module docstring); `dropped` is why a record has no revision pair (the
    first reason), `pair_verdict` and `sft_verdict` the quality gate's flags of both rows (None without a
    final response)."""

    record: StoredRecord
    draft: str | None
    final: str | None
    sft: dict[str, Any] | None
    pair: dict[str, Any] | None
    dropped: str | None
    critiques: list[Critique]
    rewards: dict[int, float]
    labels: LabelRows | None  # None: not a run with AI preference labels (or the record is not done)
    pair_verdict: quality.Verdict | None = None
    sft_verdict: quality.Verdict | None = None
    #: what people's decisions did to the revision pair and the sft row (`cai.read.decisions.EFFECTS`)
    reviewed: dict[str, tuple[str, ...]] = field(default_factory=dict)
    overruled: int = 0  # rows people kept that the gate kept out

    def tally(self, tally: quality.Tally, reviews: ReviewTally | None = None) -> None:
        """Add this record's rows to the quality gate's counts (and to `reviews`, what decisions did)."""
        if self.pair_verdict is not None:
            tally.add("pairs", self.pair_verdict)
        if self.sft_verdict is not None:
            tally.add("sft", self.sft_verdict)
        for _, verdict in self.labels.verdicts if self.labels is not None else ():
            tally.add("ai_label_pairs", verdict)
        if reviews is None:
            return
        for part, effects in self.reviewed.items():
            reviews.add(part, effects)
        for effects in self.labels.reviewed if self.labels is not None else ():
            reviews.add("ai_label_pairs", effects)
        reviews.overruled_gate += self.overruled

    @property
    def critique_rows(self) -> list[dict[str, Any]]:
        return [c.row for c in self.critiques]

    @property
    def pairs(self) -> list[dict[str, Any]]:
        """The pairs-export rows: the revision pair, if any, then the AI-labeled pairs. In a run with AI labels
        every pair row has score_chosen, score_rejected, source and label; without, the revision pair is as is."""
        if self.labels is None:
            return [self.pair] if self.pair else []
        rows = []
        if self.pair:
            rows.append({**self.pair, "score_chosen": self.pair.get("reward_chosen"),
                         "score_rejected": self.pair.get("reward_rejected"), "label": None})
        return rows + self.labels.pairs

    @cached_property
    def grades(self) -> list[dict[str, Any]]:
        """The `Run.grades()` rows of the record's `grade` steps."""
        return grade_rows(self.record)


def reward_pair(rewards: dict[int, float]) -> dict[str, float] | None:
    """With --rbr: the final response's reward (chosen) and the draft's (rejected); else None."""
    if not rewards:
        return None
    return {"reward_chosen": rewards[max(rewards)], "reward_rejected": rewards[0]}


def _critiques(rec: StoredRecord) -> list[Critique]:
    """Each critique step with the last revision of its round that follows it, as a critiques-export row."""
    revisions: dict[int, Step] = {}
    for s in rec.steps:
        if s.kind is Kind.REVISE:
            revisions[s.round] = s
    out = []
    for s in rec.of(Kind.CRITIQUE):
        rev = revisions.get(s.round)
        rev = rev if rev is not None and rev.seq > s.seq else None
        d, verdict = s.data, s.verdict
        out.append(Critique(s, rev, {
            "id": rec.id, "round": s.round, "principle": d["principle"], "layer": d.get("layer"),
            "kind": d.get("principle_kind"), "critique": d["critique"], "verdict": verdict, "parsed": d["parsed"],
            "rule_override": verdict.get("rule_override") if verdict else None, "before": d["response"],
            "after": (rev if rev is not None else s).data["response"]}))
    return out


def record_rows(rec: StoredRecord, opts: RowOptions = RowOptions()) -> RecordRows:
    """The rows of one record (labels only for a done record of a labeled run), as people's decisions leave them
    (`opts.reviews`, see `cai.read.decisions`)."""
    draft, final = draft_and_final(rec.steps)
    rewards = rewards_by_round(rec.steps)
    labels = label_rows(rec, opts) if opts.labels and rec.done else None
    if draft is None or final is None:
        return RecordRows(rec, draft, final, None, None, None, [], rewards, labels)
    crits = _critiques(rec)
    ev = quality.evidence(rec, [c.row["critique"] for c in crits], [c.row["principle"] for c in crits],
                          opts.principle_texts, rewards)
    reward, margin = reward_pair(rewards), opts.min_reward_margin
    below = bool(reward and margin is not None and reward["reward_chosen"] - reward["reward_rejected"] < margin)
    pv, sv = quality.pair_verdict(ev, opts.quality_gate, below), quality.sft_verdict(ev, opts.quality_gate)
    prompt = developer_as_system_turns(rec.messages) if opts.developer_as_system else rec.messages
    outcome = opts.reviews.outcome(rec.id, "", text_hash(final, draft)) if rec.done and draft != final else None
    out = RecordRows(rec, draft, final, None, None, pv.out[0] if pv.out else None, crits, rewards, labels, pv, sv)
    out.sft = _reviewed_sft(out, prompt, outcome, opts.reviews.mode)
    pair = {"id": rec.id, "prompt": prompt,
            "chosen": [{"role": "assistant", "content": final}],
            "rejected": [{"role": "assistant", "content": draft}],
            "metadata": {"principles": [c.row["principle"] for c in crits], "rounds": len(crits),
                         "violations": [bool(c.step.verdict["violates"]) if c.step.verdict else None
                                        for c in crits]},
            "quality": list(pv.flags), "source": "revision", "review": None, **(reward or {})}
    if outcome is not None:
        out.reviewed["pairs"] = outcome.effects
        out.pair = apply(pair, outcome)
        out.overruled += out.pair is not None and not pv.kept
    elif pv.kept and opts.reviews.mode == "only":
        out.reviewed["pairs"] = ("unreviewed",)
    elif pv.kept:
        out.pair = pair
    return out


def _reviewed_sft(rows: RecordRows, prompt: list[dict[str, str]], outcome: Outcome | None, mode: str
                  ) -> dict[str, Any] | None:
    """The record's sft row: its final answer where the gate keeps it; where people decided its revision pair,
    the answer they preferred (their edit, or the draft when they flipped the pair), none for `both_bad`; under
    `only`, none for a record whose revision pair people did not keep."""
    sv, answer = rows.sft_verdict, rows.final
    assert sv is not None and answer is not None and rows.draft is not None
    if outcome is not None and outcome.keeps:
        if outcome.edit is not None:
            effect, answer = "edited", outcome.edit
        elif outcome.decision == "rejected":
            effect, answer = "from_draft", rows.draft
        else:
            effect = "kept"
        rows.reviewed["sft"] = (effect,)
        rows.overruled += not sv.kept
    elif not sv.kept:
        return None
    elif mode == "only" or (outcome is not None and outcome.decision == "both_bad"):
        rows.reviewed["sft"] = ("dropped",)
        return None
    return {"id": rows.record.id, "messages": [*prompt, {"role": "assistant", "content": answer}],
            "quality": list(sv.flags)}


def run_rows(store: Store, opts: RowOptions, done_only: bool = True) -> Iterator[RecordRows]:
    """Every (done) record's rows, in input order: one pass over the store, one record in memory at a time."""
    for rec in store.iter_records():
        if rec.done or not done_only:
            yield record_rows(rec, opts)


def kept_pairs(ranked: list[dict[str, Any]], min_margin: float) -> tuple[list[dict[str, Any]], int]:
    """(pairs, near-ties): the stored winner-first pairs of a ranking (`cai.labels.rank.oriented`) whose margin
    P(chosen ≻ rejected) − 0.5 exceeds `min_margin`, in order; the others (exact ties always) are near-ties."""
    if min_margin < 0:
        raise ValueError(f"min_margin must be >= 0, got {min_margin}")
    kept = [p for p in ranked if p["margin"] > min_margin]
    return kept, len(ranked) - len(kept)


def label_rows(rec: StoredRecord, opts: RowOptions) -> LabelRows:
    """The AI-labeled pairs (`kept_pairs` of the `labels.rank_by` ranking that the quality gate keeps),
    comparisons and near-ties of a record's latest `label` step (see `cai.core.scoring.Labeler`). No label
    step: nothing."""
    step = next((s for s in reversed(rec.steps) if s.kind is Kind.LABEL), None)
    labels = opts.labels
    if step is None or labels is None:
        return LabelRows()
    developer_as_system = opts.developer_as_system
    data, rank_by = step.data, labels.rank_by
    cands, judge = data["candidates"], data.get("judge")
    comps = {(c["a"], c["b"]): c for c in data["comparisons"]}
    ranking = (data.get("rankings") or {}).get(rank_by) or {}
    kept, near = kept_pairs(ranking.get("pairs", []), labels.min_margin)
    prompt = developer_as_system_turns(rec.messages) if developer_as_system else rec.messages
    pairs, verdicts, reviewed = [], [], []
    for p in kept:
        i, j = p["chosen"], p["rejected"]
        pid = f"{rec.id}:{cands[i]['source']}{cands[i]['n']}>{cands[j]['source']}{cands[j]['n']}"
        verdict = quality.pair_verdict(quality.label_evidence(rec, cands[i], cands[j]), opts.quality_gate)
        verdicts.append((pid, verdict))
        if not verdict.kept:
            continue
        c = comps.get((i, j)) or comps.get((j, i)) or {}
        flip = (i, j) not in comps  # the comparison showed the rejected one as (A)
        # P(chosen wins) when it was shown as (A), and when it was shown as (B)
        p_first, p_second = ((c["p_ba"], 1 - c["p_ab"]) if flip else (c["p_ab"], 1 - c["p_ba"])) if c else (None, None)
        row = {
            "id": pid,
            "prompt": prompt, "chosen": [{"role": "assistant", "content": cands[i]["response"]}],
            "rejected": [{"role": "assistant", "content": cands[j]["response"]}],
            "score_chosen": p["score_chosen"], "score_rejected": p["score_rejected"], "source": "ai_label",
            "label": {"principle": c.get("principle"), "p_chosen_first": p_first, "p_chosen_second": p_second,
                      "margin": p["margin"], "rank_by": rank_by, "method": c.get("method"), "judge": judge},
            "quality": list(verdict.flags), "review": None}
        outcome = opts.reviews.outcome(rec.id, pid, text_hash(cands[i]["response"], cands[j]["response"]))
        if outcome is not None:
            reviewed.append(outcome.effects)
            row = apply(row, outcome)
        elif opts.reviews.mode == "only":
            reviewed.append(("unreviewed",))
            row = None
        if row is not None:
            pairs.append(row)
    rows = [{"id": rec.id, "a": c["a"], "b": c["b"], "source_a": cands[c["a"]]["source"],
             "source_b": cands[c["b"]]["source"], "response_a": cands[c["a"]]["response"],
             "response_b": cands[c["b"]]["response"], "principle": c["principle"], "p_ab": c["p_ab"],
             "p_ba": c["p_ba"], "p": c["p"], "method": c["method"], "judge": judge} for c in data["comparisons"]]
    return LabelRows(pairs, rows, near, verdicts, reviewed)


def grade_rows(rec: StoredRecord) -> list[dict[str, Any]]:
    """With rule-based rewards: a row per (graded response, proposition) with p_yes and method, and one per check
    with its score; `step` is draft (round 0) or revision; `reward` is the response's."""
    rows = []
    for s in rec.of(Kind.GRADE):
        sc = s.data["score"]
        base = {"id": rec.id, "round": s.round, "step": "draft" if s.round == 0 else "revision",
                "response_type": sc.get("response_type"), "reward": sc.get("reward")}
        for name, p in (sc.get("propositions") or {}).items():
            rows.append({**base, "kind": "proposition", "name": name, "p_yes": p.get("p_yes"),
                         "method": p.get("method"), "score": None})
        for name, value in (sc.get("checks") or {}).items():
            rows.append({**base, "kind": "check", "name": name, "p_yes": None, "method": "check", "score": value})
    return rows
