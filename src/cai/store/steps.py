"""A record's steps as the pipeline writes them and every reader reads them: `Step` (its `Kind`, round, order
and data) and `StoredRecord` (an input record with its status and steps). `Step.from_row` and
`StoredRecord.from_row` are the one reader of the store's `steps` and `records` rows.

A step's data is the JSON object the pipeline stored, unchanged: `Kind` is a str enum, so a step written from
it is stored as the same text as before kinds were typed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class Kind(StrEnum):
    """What a step is: the draft, a round's critique and revision, a grade (rule-based reward) of the draft or a
    revision, a sampled candidate, or the AI preference label of a record's candidates."""

    DRAFT = "draft"
    CRITIQUE = "critique"
    REVISE = "revise"
    GRADE = "grade"
    CANDIDATE = "candidate"
    LABEL = "label"


@dataclass(frozen=True)
class Step:
    """One stored step: `seq` orders a record's steps, `round` is 0 for the draft (and a label) and the critique
    round otherwise (a candidate's number for a candidate); `data` is the stored JSON object."""

    seq: int
    kind: Kind
    round: int
    data: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_row(cls, seq: int, kind: str, rnd: int, data: str | dict[str, Any]) -> Step:
        """A step from a `steps` row (its data as the stored JSON text, or already decoded)."""
        return cls(seq, Kind(kind), rnd, json.loads(data) if isinstance(data, str) else data)

    @property
    def response(self) -> str | None:
        """The response a draft, revision or candidate wrote, or the one a critique judged."""
        return self.data.get("response")

    @property
    def verdict(self) -> dict[str, Any] | None:
        """A critique's parsed verdict (None when the reply was not a valid verdict)."""
        return self.data.get("verdict")

    @property
    def score(self) -> dict[str, Any] | None:
        """A grade's (or a graded candidate's) rule-based score."""
        return self.data.get("score")

    @property
    def reward(self) -> float | None:
        """The reward in `score`, if any."""
        score = self.score
        return score.get("reward") if isinstance(score, dict) else None


@dataclass
class StoredRecord:
    """An input record as stored: its place in the input, id, messages, other input fields, status and steps."""

    idx: int
    id: str
    messages: list[dict[str, str]]
    extra: dict[str, Any]
    status: str
    steps: list[Step]

    @classmethod
    def from_row(cls, idx: int, rid: str, messages: str, extra: str, status: str, steps: list[Step]
                 ) -> StoredRecord:
        """A record from a `records` row (messages and extra as stored JSON text) and its steps."""
        return cls(idx, rid, json.loads(messages), json.loads(extra), status, steps)

    @property
    def done(self) -> bool:
        return self.status == "done"

    def of(self, kind: Kind) -> list[Step]:
        """The steps of `kind`, in order."""
        return [s for s in self.steps if s.kind is kind]


def draft_and_final(steps: list[Step]) -> tuple[str | None, str | None]:
    """A record's draft and its last revision (the draft when never revised)."""
    draft = next((s.response for s in steps if s.kind is Kind.DRAFT), None)
    final = draft
    for s in steps:
        if s.kind is Kind.REVISE:
            final = s.response
    return draft, final


def rewards_by_round(steps: list[Step]) -> dict[int, float]:
    """With --rbr: round → reward of the response after that round (0: the draft), from `grade` steps."""
    return {s.round: s.data["score"]["reward"] for s in steps if s.kind is Kind.GRADE}
