"""People's review decisions read against the run's current rows: what an item is, which decisions fit it, when a
decision is stale, and the JSONL form of `cai review import` / `cai review export` (docs/review.md).

An item is a critique (record id, round) or a pair of a done record: its revision pair (final revision over draft;
`pair` None) or one of its AI-labeled pairs as exported (`pair` is that pair's id in pairs.jsonl,
`<record id>:<source><n>><source><n>`). The texts come from the one read model (`cai.read.rows.RecordRows`); each
item's `sha256` is the hash of the text a decision is about, kept with the decision (`cai.store.reviews`). A
decision whose item is gone or whose hash differs from the item's current one is stale: shown so, never applied.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from cai.errors import InputError
from cai.read.decisions import text_hash
from cai.read.rows import RecordRows, frame
from cai.store.reviews import ReviewStore, StoredDecision

if TYPE_CHECKING:
    import pandas as pd

DECISIONS = {"critique": ("agree", "disagree"), "pair": ("chosen", "rejected", "tie", "both_bad")}
#: the columns of `Run.reviews()`
COLUMNS = ["id", "item", "round", "pair", "decision", "reviewer", "edit", "note", "time", "stale"]
Key = tuple[str, str, int, str]  # (item, record id, round or 0, pair id or "")


def revision_pair(r: RecordRows) -> tuple[str, str] | None:
    """(final revision, draft) of a done record whose final revision differs from its draft: the revision pair
    people can review; None where there is none."""
    if r.record.done and r.draft is not None and r.final is not None and r.draft != r.final:
        return r.final, r.draft
    return None


def record_items(r: RecordRows) -> dict[Key, str]:
    """The reviewable items of one record, in the order a reviewer meets them (critiques by round, the revision
    pair, the AI-labeled pairs), each with the hash of its current text."""
    rid = r.record.id
    out = {("critique", rid, c.row["round"], ""): text_hash(c.row["before"], c.row["critique"]) for c in r.critiques}
    if not r.record.done:
        return out
    if (texts := revision_pair(r)) is not None:
        out[("pair", rid, 0, "")] = text_hash(*texts)
    for p in r.labels.pairs if r.labels is not None else ():
        out[("pair", rid, 0, p["id"])] = text_hash(p["chosen"][0]["content"], p["rejected"][0]["content"])
    return out


class Items:
    """The reviewable items of some records (`add`: their rows as the models made them, people's decisions
    ignored), each with the hash of its current text."""

    def __init__(self, rows: Iterable[RecordRows] = ()) -> None:
        self.hashes: dict[Key, str] = {}
        self.records: set[str] = set()
        for r in rows:
            self.add(r)

    def add(self, r: RecordRows) -> None:
        self.records.add(r.record.id)
        self.hashes.update(record_items(r))

    def hash_of(self, key: Key) -> str:
        """The current hash of item `key`; InputError (one line) for an unknown record, round or pair."""
        if key in self.hashes:
            return self.hashes[key]
        item, rid, rnd, pair = key
        if rid not in self.records:
            raise InputError(f"no record {rid!r} in the run")
        if item == "critique":
            raise InputError(f"record {rid!r} has no critique of round {rnd}")
        if pair:
            raise InputError(f"record {rid!r} has no AI-labeled pair {pair!r}")
        raise InputError(f"record {rid!r} has no revision pair (not done, or its final answer is its draft)")

    def stale(self, d: StoredDecision) -> bool:
        """Whether `d` is about text that has changed (or an item the run no longer has)."""
        return self.hashes.get(d.key) != d.sha256


class Decision(BaseModel):
    """One decision as given (a JSONL line, or `Run.review`): see docs/review.md."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1)
    item: Literal["critique", "pair"]
    round: Optional[int] = Field(default=None, ge=1)
    pair: Optional[str] = None
    decision: str
    reviewer: str = Field(min_length=1)
    edit: Optional[str] = None
    note: Optional[str] = None
    time: Optional[datetime] = None
    sha256: Optional[str] = Field(default=None, pattern=r"^[0-9a-f]{64}$")

    @model_validator(mode="after")
    def _fits(self) -> Decision:
        allowed = DECISIONS[self.item]
        if self.decision not in allowed:
            raise ValueError(f"decision {self.decision!r} is not one for a {self.item} (one of: {', '.join(allowed)})")
        if self.item == "critique" and (self.round is None or self.pair is not None or self.edit is not None):
            raise ValueError("a critique decision needs a round, and has no pair or edit")
        if self.item == "pair" and self.round is not None:
            raise ValueError("a pair decision has no round")
        if self.pair is not None and not self.pair.startswith(f"{self.id}:"):
            raise ValueError(f"pair {self.pair!r} is not one of record {self.id!r} (it starts with '{self.id}:')")
        if self.edit is not None and self.decision not in ("chosen", "rejected"):
            raise ValueError("an edit corrects the better side: only with decision chosen or rejected")
        return self

    @property
    def key(self) -> Key:
        return (self.item, self.id, self.round or 0, self.pair or "")

    def stored(self, items: Items) -> StoredDecision:
        """As stored, with the hash of the item's current text (or the `sha256` given with it) and its time
        (now if none was given); InputError for an item the run does not have."""
        current = items.hash_of(self.key)  # the item must exist, also when a hash is given
        sha = self.sha256 or current
        when = self.time.replace(tzinfo=self.time.tzinfo or UTC).timestamp() if self.time else time.time()
        return StoredDecision(self.reviewer, self.item, self.id, self.round or 0, self.pair or "", self.decision,
                              self.edit, self.note, sha, when)


def _problem(e: ValidationError) -> str:
    err = e.errors()[0]
    where = ".".join(str(p) for p in err["loc"])
    if err["type"] == "extra_forbidden":
        return f"unknown key {where!r}"
    msg = err["msg"].removeprefix("Value error, ")
    return f"{where}: {msg}" if where else msg


def decide(items: Items, **fields: Any) -> StoredDecision:
    """One decision from keywords (`Run.review`); InputError (one line) if it is not valid for its item."""
    try:
        return Decision(**fields).stored(items)
    except ValidationError as e:
        raise InputError(_problem(e)) from None


def read_jsonl(path: Path, items: Items) -> list[StoredDecision]:
    """Every line of the decisions file `path`, checked against the run's items before anything is stored;
    InputError naming `path` and the line of the first bad one."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read the decisions file ({getattr(e, 'strerror', None) or e})",
                         path=str(path)) from None
    out = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            out.append(Decision.model_validate_json(line).stored(items))
        except ValidationError as e:
            kind = e.errors()[0]["type"]
            raise InputError("not a JSON object" if kind.startswith("json") or kind == "model_type"
                             else _problem(e), path=str(path), line=n) from None
        except InputError as e:
            raise InputError(str(e), path=str(path), line=n) from None
    return out


def to_json(d: StoredDecision) -> dict[str, Any]:
    """A decision as a JSONL line of `cai review export` (keys that do not apply are left out)."""
    row: dict[str, Any] = {"id": d.id, "item": d.item}
    if d.item == "critique":
        row["round"] = d.round
    if d.pair:
        row["pair"] = d.pair
    row.update(decision=d.decision, reviewer=d.reviewer)
    row.update({k: v for k, v in (("edit", d.edit), ("note", d.note)) if v is not None})
    row["time"] = datetime.fromtimestamp(d.time, tz=UTC).isoformat(timespec="microseconds")
    row["sha256"] = d.sha256
    return row


def reviews_frame(run_dir: Path, items: Items) -> pd.DataFrame:
    """Every stored decision (oldest first) with whether it is stale: the `COLUMNS`."""
    with ReviewStore(run_dir, readonly=True) as store:
        decisions = store.decisions()
    rows = [{"id": d.id, "item": d.item, "round": d.round if d.item == "critique" else None, "pair": d.pair or None,
             "decision": d.decision, "reviewer": d.reviewer, "edit": d.edit, "note": d.note,
             "time": datetime.fromtimestamp(d.time, tz=UTC), "stale": items.stale(d)} for d in decisions]
    df = frame(rows, COLUMNS)
    df["round"] = df["round"].astype("Int64")  # None for pairs, not NaN in a float column
    return df


class StatsInputs:
    """What the agreement figures (`cai.read.review_stats`) read from a run's rows, gathered in the caller's one
    pass over the store (`add` each record's rows as the models made them): the items, with their current
    hashes; the critiques and their verdicts; the pairs of done records with their source and AI label."""

    def __init__(self) -> None:
        self.items = Items()
        self.critiques: list[dict[str, Any]] = []
        self.pairs: list[dict[str, Any]] = []

    def add(self, r: RecordRows) -> None:
        self.items.add(r)
        self.critiques += [{"id": c["id"], "round": c["round"], "principle": c["principle"],
                            "violates": (c["verdict"] or {}).get("violates")} for c in r.critique_rows]
        if r.record.done:
            self.pairs += [{"id": p["id"], "source": p["source"], "label": p.get("label")} for p in r.pairs]

    def stats(self, run_dir: Path) -> dict[str, Any]:
        """Every figure of docs/review_stats.md, from the run folder's decisions (`Run.review_stats`)."""
        from cai.read.review_stats import review_stats

        return review_stats(reviews_frame(run_dir, self.items), self.critiques, self.pairs)
