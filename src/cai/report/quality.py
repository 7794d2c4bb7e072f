"""The report's "Quality" section: what the quality gate flagged and kept out, per flag, with one example each."""

from __future__ import annotations

from dataclasses import dataclass, field

from cai.read.quality import PARTS, REASONS, Tally
from cai.read.rows import RecordRows
from cai.scoring.quality import is_truncated
from cai.store.steps import Kind

EXAMPLE_CHARS = 400  # of the flagged response shown as the example
PART_NAMES = {"pairs": "revision pairs", "sft": "sft rows", "ai_label_pairs": "AI-labeled pairs"}


@dataclass(frozen=True)
class Example:
    """A row a flag was found on: the record (or pair) id, the part, and the start of the response it is about."""

    id: str
    part: str
    text: str


@dataclass
class QualityStats:
    """The gate's counts over the run's done records, and the first example of each flag."""

    tally: Tally
    examples: dict[str, Example] = field(default_factory=dict)

    def add(self, rows: RecordRows) -> None:
        rows.tally(self.tally)
        found = [("pairs", rows.record.id, rows.pair_verdict), ("sft", rows.record.id, rows.sft_verdict)]
        for part, rid, verdict in found:
            for flag in verdict.flags if verdict is not None else ():
                if flag not in self.examples:
                    text = rows.draft if flag == "truncated" and _draft_cut(rows) else rows.final
                    self.examples[flag] = Example(rid, part, (text or "")[:EXAMPLE_CHARS])

    def table(self) -> list[list[str]]:
        """Rows of flag, then per part "flagged / kept out", then the example's id."""
        summary = self.tally.summary()
        parts = [p for p in PARTS if p in summary]
        out = []
        for flag in REASONS:
            counts = [(summary[p]["flagged"].get(flag, 0), summary[p]["dropped"].get(flag, 0)) for p in parts]
            if any(f or d for f, d in counts):
                out.append([flag, *(f"{f:,} / {d:,}" for f, d in counts)])
        return out

    @property
    def parts(self) -> list[str]:
        summary = self.tally.summary()
        return [PART_NAMES[p] for p in PARTS if p in summary]


def _draft_cut(rows: RecordRows) -> bool:
    draft = next((s for s in rows.record.steps if s.kind is Kind.DRAFT), None)
    return draft is not None and is_truncated(draft.data.get("finish_reason"))
