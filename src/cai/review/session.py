"""A reviewer's session on a run: the queue (built once), the reviewer's own decisions, one record at a time, and
saving a decision through `Run.review` (the one path that checks and stores decisions). Reads the run read-only;
writes nothing but decisions, to reviews.sqlite, without the run lock. Other reviewers' decisions are read only to
split the work; none of them ever leaves this object.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cai.errors import InputError
from cai.read.reviews import Key
from cai.read.run import Run
from cai.review import page_data
from cai.review.queue import Entry, build_queue, entries, finished
from cai.store.reviews import ReviewStore, StoredDecision

#: what a decision from the page may carry; the reviewer is the session's, never the request's
FIELDS = {"id", "item", "round", "pair", "decision", "edit", "note"}


class ReviewSession:
    """`reviewer`'s queue over the run folder `run_dir` (see `cai.review.queue.build_queue` for the options)."""

    def __init__(self, run_dir: str | Path, reviewer: str, *, sample: int | None = None, seed: int = 0,
                 only: Sequence[str] = (), overlap: int = 0) -> None:
        if not reviewer.strip():
            raise InputError("the reviewer's name is empty (give --reviewer NAME)")
        self.run = Run(run_dir)
        self.reviewer = reviewer
        pool, self.items = entries(self.run.record_rows())
        with ReviewStore(self.run.path, readonly=True) as store:
            decisions = store.decisions()
        self.queue: list[Entry] = build_queue(pool, decisions, self.items, reviewer, sample=sample, seed=seed,
                                              only=only, overlap=overlap)
        self.index = {e.id: i for i, e in enumerate(self.queue)}
        self.mine: dict[Key, StoredDecision] = {d.key: d for d in decisions if d.reviewer == reviewer}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.queue)

    def start(self) -> int:
        """The place of the first record this reviewer has not finished (0 when all are)."""
        with self._lock:
            return next((i for i, e in enumerate(self.queue) if not finished(e, self.mine, self.items)), 0)

    def progress(self) -> dict[str, Any]:
        """Records finished of the queue, overall and by principle (of the first critique round)."""
        with self._lock:
            done = [finished(e, self.mine, self.items) for e in self.queue]
        by: dict[str, list[int]] = {}
        for e, ok in zip(self.queue, done):
            part = by.setdefault(e.stratum, [0, 0])
            part[0] += ok
            part[1] += 1
        return {"done": sum(done), "total": len(done),
                "by_principle": [{"principle": p, "done": d, "total": t} for p, (d, t) in sorted(by.items())]}

    def record(self, n: int) -> dict[str, Any]:
        """The record at place `n` of the queue, as the page shows it (read now, from one record's rows)."""
        if not 0 <= n < len(self.queue):
            raise InputError(f"no record {n} in the queue (it has {len(self.queue)})")
        rows = self.run.rows_of(self.queue[n].id)
        if rows is None:
            raise InputError(f"record {self.queue[n].id!r} is no longer in the run")
        with self._lock:
            mine = {k: d for k, d in self.mine.items() if k[1] == rows.record.id}
        return {"index": n, "total": len(self.queue), **page_data.record_json(rows, mine)}

    def save(self, body: Any) -> dict[str, Any]:
        """Store one decision from the page (a JSON object of `FIELDS`) as this reviewer's; InputError (one line)
        for a record outside the queue or a decision that does not fit its item. Returns it as the page shows it."""
        if not isinstance(body, dict) or not set(body) <= FIELDS or not isinstance(body.get("id"), str):
            raise InputError(f"a decision is a JSON object with an id and some of: {', '.join(sorted(FIELDS))}")
        if body["id"] not in self.index:
            raise InputError(f"record {body['id']!r} is not in this reviewer's queue")
        if body.get("item") not in ("critique", "pair"):
            raise InputError("item must be critique or pair")
        rnd = body.get("round") if body["item"] == "critique" else None
        if body["item"] == "critique" and not isinstance(rnd, int):
            raise InputError("a critique decision needs its round")
        d = self.run.review(body["id"], str(body.get("decision")), reviewer=self.reviewer, round=rnd,
                            pair=body.get("pair") or None, edit=_text(body.get("edit")), note=_text(body.get("note")))
        with self._lock:
            self.mine[d.key] = d
        return page_data.mine_json(d, False) or {}


def _text(value: Any) -> str | None:
    """An optional text field: None for absent or blank."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if not isinstance(value, str):
        raise InputError("edit and note are text")
    return value
