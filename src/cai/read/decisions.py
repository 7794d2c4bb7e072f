"""People's decisions applied to the exported pairs and sft rows (`--reviews`, `--review-policy`; docs/review.md).

The read model (`cai.read.rows`) asks `Reviews.outcome` what people decided about a pair, given the hash of the
pair's current text: only decisions about that very text count (a stale one never applies). Where reviewers
differ, the policy decides: `majority` (more than half of them), `unanimous` (all of them) or `latest` (the most
recent decision). A pair on which people do not reach a decision under the policy is dropped (`disagreement`).

Under `apply`, a pair people decided is written as they decided, whatever the quality gate and the margins said
of it (the page shows the gate's flags to the reviewer): `chosen` keeps it, `rejected` flips it, `tie` and
`both_bad` drop it, an `edit` replaces the better side's text. `only` also drops every pair nobody decided;
`ignore` leaves the exports as the models made them. Critique decisions never change an export: they measure the
critic (`cai review stats`).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cai.store.reviews import ReviewStore, StoredDecision

MODES = ("apply", "only", "ignore")
POLICIES = ("majority", "unanimous", "latest")
KEEPS = ("chosen", "rejected")  # the decisions that keep a pair (the others drop it)
#: what decisions do to the pairs of a part (`ReviewTally`): every pair people decided is `decided`, then counted
#: under what happened to it (a flipped pair may also be edited); `unreviewed` pairs are the ones `only` drops
EFFECTS = ("decided", "kept", "flipped", "edited", "tie", "both_bad", "disagreement", "unreviewed")


def text_hash(*texts: str) -> str:
    """The sha256 (hex) of `texts` taken together (as a JSON list: no two lists of texts share one)."""
    return hashlib.sha256(json.dumps(list(texts), ensure_ascii=False).encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Outcome:
    """What people decided about one pair: `decision` (None: they disagree under the policy), the edit of the
    better side if any, and how many reviewers decided."""

    decision: str | None
    edit: str | None
    reviewers: int

    @property
    def keeps(self) -> bool:
        return self.decision in KEEPS

    @property
    def effects(self) -> tuple[str, ...]:
        """What it does to the pair, as counted in `EFFECTS`."""
        if self.decision is None:
            return ("decided", "disagreement")
        if not self.keeps:
            return ("decided", self.decision)
        return ("decided", "flipped" if self.decision == "rejected" else "kept",
                *(("edited",) if self.edit is not None else ()))

    @property
    def review(self) -> dict[str, Any]:
        """The `review` field of the exported pair."""
        return {"decision": self.decision, "reviewers": self.reviewers}


def resolve(decisions: list[StoredDecision], policy: str) -> Outcome:
    """The outcome of the current decisions of different reviewers on one pair under `policy`. The edit is the
    latest one among the reviewers whose decision won."""
    ordered = sorted(decisions, key=lambda d: d.time)
    counts = Counter(d.decision for d in ordered)
    if policy == "latest":
        winner: str | None = ordered[-1].decision
    else:
        top, n = counts.most_common(1)[0]
        needed = len(ordered) if policy == "unanimous" else len(ordered) // 2 + 1
        winner = top if n >= needed else None
    edits = [d.edit for d in ordered if d.decision == winner and d.edit is not None]
    if policy == "latest":
        edits = [ordered[-1].edit] if ordered[-1].edit is not None else []
    return Outcome(winner, edits[-1] if edits else None, len(ordered))


@dataclass
class Reviews:
    """The run's decisions on pairs, read once, and how the exports use them (`mode`, `policy`). `used` collects
    the decisions that matched a pair's current text, so that the others can be counted as stale."""

    mode: str = "apply"
    policy: str = "majority"
    by_item: dict[tuple[str, str], list[StoredDecision]] = field(default_factory=dict)
    used: set[tuple[str, str, str]] = field(default_factory=set)

    @classmethod
    def load(cls, run_dir: Path, mode: str, policy: str) -> Reviews:
        """The decisions of the run folder `run_dir` (also under `ignore`, to count them)."""
        if mode not in MODES:
            raise ValueError(f"reviews must be one of {', '.join(MODES)}, not {mode!r}")
        if policy not in POLICIES:
            raise ValueError(f"review policy must be one of {', '.join(POLICIES)}, not {policy!r}")
        out = cls(mode, policy)
        with ReviewStore(run_dir, readonly=True) as store:
            out.add(store.decisions())
        return out

    def add(self, decisions: Iterable[StoredDecision]) -> None:
        for d in decisions:
            if d.item == "pair":
                self.by_item.setdefault((d.id, d.pair), []).append(d)

    def outcome(self, record_id: str, pair: str, sha256: str) -> Outcome | None:
        """What people decided about the pair (`pair` "" for the revision pair) whose text hashes to `sha256`;
        None where nobody decided about that text (or under `ignore`)."""
        current = [d for d in self.by_item.get((record_id, pair), ()) if d.sha256 == sha256]
        self.used.update((d.reviewer, d.id, d.pair) for d in current)
        return resolve(current, self.policy) if current and self.mode != "ignore" else None

    @property
    def stale(self) -> int:
        """Decisions on pairs that matched no current pair text (so far)."""
        return sum(1 for ds in self.by_item.values() for d in ds if (d.reviewer, d.id, d.pair) not in self.used)

    @property
    def total(self) -> int:
        return sum(len(ds) for ds in self.by_item.values())


def apply(row: dict[str, Any], outcome: Outcome) -> dict[str, Any] | None:
    """Pair-export `row` as people decided (`outcome` keeps it), else None: flipped for `rejected` (its reward and
    score columns too), the better side's text replaced by the edit, `source` human or human_edit, and `review`."""
    if not outcome.keeps:
        return None
    out = dict(row)
    if outcome.decision == "rejected":
        out["chosen"], out["rejected"] = row["rejected"], row["chosen"]
        for a, b in (("reward_chosen", "reward_rejected"), ("score_chosen", "score_rejected")):
            if a in row:
                out[a], out[b] = row[b], row[a]
    if outcome.edit is not None:
        out["chosen"] = [{"role": "assistant", "content": outcome.edit}]
    out["source"] = "human_edit" if outcome.edit is not None else "human"
    out["review"] = outcome.review
    return out


@dataclass
class ReviewTally:
    """Counts of what the decisions did to a run's exports: per part (`pairs`: revision pairs, `ai_label_pairs`)
    how many pairs each of `EFFECTS` touched, and for `sft` rows `edited` (the edit is the answer), `from_draft`
    (people preferred the draft), `kept` (the final answer, kept by people) and `dropped` (both_bad, or not
    reviewed under `only`)."""

    mode: str
    policy: str
    parts: dict[str, Counter[str]] = field(default_factory=lambda: {p: Counter() for p in
                                                                   ("pairs", "ai_label_pairs", "sft")})
    overruled_gate: int = 0  # pairs or sft rows written because people kept them although the gate kept them out

    def add(self, part: str, effects: Iterable[str]) -> None:
        self.parts[part].update(effects)

    def summary(self, reviews: Reviews) -> dict[str, Any]:
        """The manifest's `reviews` section."""
        out: dict[str, Any] = {"mode": self.mode, "policy": self.policy, "decisions": reviews.total,
                               "stale": reviews.stale, "overruled_gate": self.overruled_gate}
        for part, c in self.parts.items():
            out[part] = {k: v for k, v in sorted(c.items()) if v}
        pairs = self.parts["pairs"] + self.parts["ai_label_pairs"]
        out.update(applied=pairs["decided"], flipped=pairs["flipped"], edited=pairs["edited"],
                   dropped=sum(pairs[e] for e in ("tie", "both_bad", "disagreement", "unreviewed")))
        return out


def reviewed_text(section: dict[str, Any] | None) -> str:
    """`; people decided 3 pairs: 1 flipped, 1 edited, 1 dropped` from the manifest's `reviews` section, for the
    run summary, `cai export` and `cai status`; empty where people decided nothing that was applied."""
    if not section or not section.get("applied"):
        return ""
    n = section["applied"]
    what = ", ".join(f"{section[k]} {k}" for k in ("flipped", "edited", "dropped") if section.get(k))
    only = ", only these written" if section.get("mode") == "only" else ""
    return f"; people decided {n} pair{'s' if n != 1 else ''}" + (f": {what}" if what else "") + only
