"""The quality gate in the read model: what the checks of `cai.scoring.quality` are told about a record's rows
(`evidence`, `label_evidence`), which rows the gate keeps out (`pair_verdict`, `sft_verdict`), and the counts
per flag that the manifest, the run summary, `cai status`, the report and the dataset card show (`Tally`).

A revision pair is always kept out when a side is empty or both are the same (there is no preference to learn)
and, with `--min-reward-margin`, when its reward improved by less; the gate (`--quality-gate`) adds the flags
of its level. A row kept out by several reasons is counted once, under the first in `REASONS` order, in the
`dropped` counts; `flagged` counts every flag of every row, kept or not.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cai.scoring import quality as checks
from cai.store.steps import Kind, Step, StoredRecord

ALWAYS = ("empty", "unchanged")  # keep a revision pair out whatever the gate
MARGIN = "margin"  # --min-reward-margin
REASONS = (*ALWAYS, MARGIN, *(f for f in checks.FLAGS if f not in ALWAYS))
PARTS = ("pairs", "sft", "ai_label_pairs")  # the rows the gate looks at


def _last_user(messages: Sequence[Mapping[str, Any]]) -> str:
    return next((str(m.get("content") or "") for m in reversed(messages) if m.get("role") == "user"), "")


def _finish(step: Step | None) -> str | None:
    return step.data.get("finish_reason") if step is not None else None


def _judge_p_final(rec: StoredRecord, final_round: int) -> float | None:
    """P(final ≻ draft) from the record's AI labels, when the draft and the final revision were both judged."""
    step = next((s for s in reversed(rec.steps) if s.kind is Kind.LABEL), None)
    if step is None or final_round == 0:
        return None
    cands = step.data.get("candidates") or []
    index = {(c.get("source"), c.get("n")): i for i, c in enumerate(cands)}
    d, f = index.get(("draft", 0)), index.get(("revision", final_round))
    for c in step.data.get("comparisons") or []:
        if (c["a"], c["b"]) == (f, d):
            return float(c["p"])
        if (c["a"], c["b"]) == (d, f):
            return 1.0 - float(c["p"])
    return None


def evidence(rec: StoredRecord, critiques: Sequence[str], principles: Sequence[str],
             texts: Mapping[str, Sequence[str]], rewards: Mapping[int, float]) -> checks.Evidence:
    """What the checks are told about a record's draft and final response (its revision pair and sft row): the
    critiques and principle texts of its rounds, and its earlier revisions (which a later critique may quote)."""
    draft = next((s for s in rec.steps if s.kind is Kind.DRAFT), None)
    revisions = rec.of(Kind.REVISE)
    last = revisions[-1] if revisions else draft
    return checks.Evidence(
        prompt=_last_user(rec.messages), draft=(draft.response or "") if draft else "",
        final=(last.response or "") if last else "", draft_finish=_finish(draft), final_finish=_finish(last),
        critiques=tuple(critiques), principles=tuple(t for p in principles for t in texts.get(p, ())),
        expected=(rec.extra or {}).get("expected"),
        reward_draft=rewards.get(0) if rewards else None, reward_final=rewards[max(rewards)] if rewards else None,
        judge_p_final=_judge_p_final(rec, revisions[-1].round if revisions else 0),
        revisions=tuple(s.response or "" for s in revisions[:-1]))


def label_evidence(rec: StoredRecord, chosen: Mapping[str, Any], rejected: Mapping[str, Any]) -> checks.Evidence:
    """What the checks are told about an AI-labeled pair of candidates (`source`, `n`, `response` each)."""
    kinds = {"draft": Kind.DRAFT, "revision": Kind.REVISE, "sample": Kind.CANDIDATE}

    def finish(c: Mapping[str, Any]) -> str | None:
        kind = kinds.get(c.get("source", ""))
        return _finish(next((s for s in rec.steps if s.kind is kind and s.round == c.get("n")), None))

    return checks.Evidence(prompt=_last_user(rec.messages), draft=rejected["response"], final=chosen["response"],
                           draft_finish=finish(rejected), final_finish=finish(chosen),
                           expected=(rec.extra or {}).get("expected"))


@dataclass(frozen=True)
class Verdict:
    """A row's quality flags and the reasons that keep it out (empty: the row is written)."""

    flags: tuple[str, ...]
    out: tuple[str, ...]

    @property
    def kept(self) -> bool:
        return not self.out


def _ordered(reasons: Iterable[str]) -> tuple[str, ...]:
    got = set(reasons)
    return tuple(r for r in REASONS if r in got)


def pair_verdict(ev: checks.Evidence, gate: str, below_margin: bool = False) -> Verdict:
    """A revision pair's (or an AI-labeled pair's) flags and what keeps it out under `gate`."""
    flags = checks.pair_flags(ev, strict=gate == "strict")
    gated = [f for f in flags if f in ALWAYS or not checks.kept((f,), gate)]
    return Verdict(flags, _ordered([*gated, *([MARGIN] if below_margin else [])]))


def sft_verdict(ev: checks.Evidence, gate: str) -> Verdict:
    """An sft row's flags (about the final response) and what keeps it out under `gate`."""
    flags = checks.sft_flags(ev, strict=gate == "strict")
    return Verdict(flags, _ordered(f for f in flags if not checks.kept((f,), gate)))


@dataclass
class Tally:
    """Counts of the gate over a run's rows: per part (`PARTS`), rows seen, kept, every flag, and the rows kept
    out by their first reason."""

    gate: str
    seen: Counter[str] = field(default_factory=Counter)
    kept: Counter[str] = field(default_factory=Counter)
    flagged: dict[str, Counter[str]] = field(default_factory=lambda: {p: Counter() for p in PARTS})
    dropped: dict[str, Counter[str]] = field(default_factory=lambda: {p: Counter() for p in PARTS})

    def add(self, part: str, verdict: Verdict) -> None:
        self.seen[part] += 1
        self.kept[part] += verdict.kept
        self.flagged[part].update(verdict.flags)
        if verdict.out:
            self.dropped[part][verdict.out[0]] += 1

    def summary(self) -> dict[str, Any]:
        """The manifest's `quality` section."""
        return {"gate": self.gate, "keeps_out": [f for f in REASONS if f in checks.GATES[self.gate]],
                **{p: {"rows": self.seen[p], "kept": self.kept[p],
                       "flagged": {f: self.flagged[p][f] for f in REASONS if self.flagged[p][f]},
                       "dropped": {f: self.dropped[p][f] for f in REASONS if self.dropped[p][f]}}
                   for p in PARTS if self.seen[p]}}


def counts_text(counts: Mapping[str, int]) -> str:
    """`degenerate 2, leak 1` (in `REASONS` order; empty for no count)."""
    return ", ".join(f"{f} {counts[f]}" for f in REASONS if counts.get(f))


def kept_text(exports: Mapping[str, int], summary: Mapping[str, Any] | None) -> str:
    """What the exports kept and what was kept out, by source and by flag, for the run summary and `cai status`:
    `5 sft (1 kept out: truncated 1), 4 pairs (revision 3, AI label 1; 2 near-ties; 3 kept out: unchanged 1,
    degenerate 2)`."""
    summary = summary or {}

    def out(part: str, extra: int = 0, extra_text: str = "") -> str:
        dropped = dict((summary.get(part) or {}).get("dropped") or {})
        n = sum(dropped.values()) + extra
        text = ", ".join(t for t in (counts_text(dropped), extra_text) if t)
        return f"{n} kept out: {text}" if n else ""

    sft = out("sft")
    parts = [f"{exports.get('sft', 0)} sft" + (f" ({sft})" if sft else "")]
    details = []
    if "pairs_ai_label" in exports:
        ai = exports["pairs_ai_label"]
        details.append(f"revision {exports.get('pairs', 0) - ai}, AI label {ai}")
        near = exports.get("label_near_ties", 0)
        details.append(f"{near} near-{'tie' if near == 1 else 'ties'}")
    pairs_out = out("pairs") if summary else (f"{exports['pairs_dropped']} kept out"
                                               if exports.get("pairs_dropped") else "")
    labels_out = out("ai_label_pairs")
    details += [t for t in (pairs_out, labels_out and f"AI label {labels_out}") if t]
    parts.append(f"{exports.get('pairs', 0)} pairs" + (f" ({'; '.join(details)})" if details else ""))
    return ", ".join(parts)
