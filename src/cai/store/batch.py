"""The batch plugin's tables in a run store, and every statement on them: `batch_jobs` (one row per provider batch)
and `batch_requests` (one row per request sent, matched to results by `custom_id`).

The tables belong to `cai.batch`: a store gets them when the plugin first opens it for writing, and a run that never
used a batch API has none (every read here then answers as if they were empty). They are no part of the store's
schema, so they need no migration. This module shares the store's read connection and writes through its writer.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable
from typing import Any

from cai.store import Store

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS batch_jobs(n INTEGER PRIMARY KEY AUTOINCREMENT, token TEXT NOT NULL UNIQUE,
    provider TEXT NOT NULL, model TEXT NOT NULL, state TEXT NOT NULL, batch_id TEXT, file_id TEXT,
    requests INTEGER NOT NULL, created REAL NOT NULL, ended REAL, status TEXT, counts TEXT, note TEXT)""",
    """CREATE TABLE IF NOT EXISTS batch_requests(custom_id TEXT PRIMARY KEY, job INTEGER NOT NULL, key TEXT NOT NULL,
    role TEXT NOT NULL, record TEXT, stage TEXT NOT NULL, round INTEGER NOT NULL, attempt INTEGER NOT NULL,
    mode TEXT, state TEXT NOT NULL, error TEXT)""",
    "CREATE INDEX IF NOT EXISTS batch_requests_key ON batch_requests(key)",
    "CREATE INDEX IF NOT EXISTS batch_requests_job ON batch_requests(job)",
)
JOB_COLUMNS = ("n", "token", "provider", "model", "state", "batch_id", "file_id", "requests", "created", "ended",
               "status", "counts", "note")
REQUEST_COLUMNS = ("custom_id", "key", "role", "record", "stage", "round", "attempt", "mode", "state")
# The budget holds of batch ?'s requests (a request's hold is keyed by its call's cache key, as in `Store.hold`).
RELEASE_HOLDS = "DELETE FROM budget_holds WHERE key IN (SELECT key FROM batch_requests WHERE job=?)"
UPDATABLE = frozenset({"state", "batch_id", "file_id", "status", "counts", "note"})  # what `update_job` may set


class BatchTables:
    """The batch tables of `store`, created now if the store is writable."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._conn = store._read  # a store-side module: it reads on the store's own connection
        if not store.readonly:
            store.write_now(lambda c: [c.execute(s) for s in SCHEMA])

    def exists(self) -> bool:
        return self._conn.execute("SELECT 1 FROM sqlite_master WHERE name='batch_jobs'").fetchone() is not None

    # -- reads ---------------------------------------------------------------------------
    def jobs(self, states: tuple[str, ...] = ()) -> list[dict[str, Any]]:
        """The batches (all, or those in one of `states`) in the order they were stored; `counts` decoded."""
        if not self.exists():
            return []
        where = f"WHERE state IN ({','.join('?' * len(states))})" if states else ""
        rows = self._conn.execute(f"SELECT {', '.join(JOB_COLUMNS)} FROM batch_jobs {where} ORDER BY n", states)
        return [{**dict(zip(JOB_COLUMNS, r, strict=True)), "counts": json.loads(r[11]) if r[11] else {}}
                for r in rows]

    def sent(self) -> list[tuple[str, str, str, dict[str, Any] | None, str]]:
        """(key, custom_id, request state, its stored error or None, its batch's state) of every request sent,
        oldest attempt first."""
        if not self.exists():
            return []
        rows = self._conn.execute("SELECT r.key, r.custom_id, r.state, r.error, j.state FROM batch_requests r "
                                  "JOIN batch_jobs j ON j.n = r.job ORDER BY r.attempt")
        return [(k, c, s, json.loads(e) if e else None, j) for k, c, s, e, j in rows]

    def requests(self, job: int) -> dict[str, dict[str, Any]]:
        """The requests of batch `job`, by custom_id."""
        rows = self._conn.execute(f"SELECT {', '.join(REQUEST_COLUMNS)} FROM batch_requests WHERE job=?", (job,))
        return {r[0]: dict(zip(REQUEST_COLUMNS, r, strict=True)) for r in rows}

    def in_flight(self, open_states: tuple[str, ...]) -> list[tuple[str, int, str, int]]:
        """(stage, round, batch state, requests) of the requests still `sent` in batches in `open_states`."""
        if not self.exists():
            return []
        marks = ",".join("?" * len(open_states))
        return list(self._conn.execute(
            "SELECT r.stage, r.round, j.state, COUNT(*) FROM batch_requests r JOIN batch_jobs j ON j.n = r.job "
            f"WHERE r.state='sent' AND j.state IN ({marks}) GROUP BY r.stage, r.round, j.state "
            "ORDER BY MIN(r.attempt), r.stage", open_states))

    def request_counts(self) -> dict[str, int]:
        """Requests per state."""
        if not self.exists():
            return {}
        return dict(self._conn.execute("SELECT state, COUNT(*) FROM batch_requests GROUP BY state"))

    # -- writes (`write_now`: durable when they return; `end_job` is queued) -------------------
    def add_job(self, token: str, provider: str, model: str, rows: list[dict[str, Any]]) -> int:
        """Store a batch in state `creating` with its requests (state `sent`) and, for each request with a `usd`,
        its budget hold (`Store.hold`); returns its number."""
        out: list[int] = []

        def op(c: sqlite3.Connection) -> None:
            n = c.execute("INSERT INTO batch_jobs(token, provider, model, state, requests, created) "
                          "VALUES(?,?,?,'creating',?,?)", (token, provider, model, len(rows), time.time())).lastrowid
            c.executemany("INSERT INTO batch_requests(custom_id, job, key, role, record, stage, round, attempt, mode, "
                          "state) VALUES(?,?,?,?,?,?,?,?,?,'sent')",
                          [(r["custom_id"], n, r["key"], r["role"], r["record"], r["stage"], r["round"],
                            r["attempt"], r.get("mode")) for r in rows])
            c.executemany("INSERT OR REPLACE INTO budget_holds VALUES(?,?,?)",
                          [(r["key"], r["usd"], time.time()) for r in rows if r.get("usd") is not None])
            out.append(int(n or 0))

        self.store.write_now(op)
        return out[0]

    def update_job(self, n: int, fields: dict[str, Any]) -> None:
        """Set `fields` (columns in `UPDATABLE`; `counts` a dict) of batch `n`."""
        if not fields.keys() <= UPDATABLE:
            raise ValueError(f"not an updatable batch column: {sorted(fields.keys() - UPDATABLE)}")
        if "counts" in fields:
            fields = {**fields, "counts": json.dumps(fields["counts"], sort_keys=True)}
        sets = ", ".join(f"{k}=?" for k in fields)
        self.store.write_now(lambda c: c.execute(f"UPDATE batch_jobs SET {sets} WHERE n=?", (*fields.values(), n)))

    def drop_job(self, n: int) -> None:
        """Delete batch `n`, its requests and their budget holds."""
        def op(c: sqlite3.Connection) -> None:
            c.execute(RELEASE_HOLDS, (n,))
            c.execute("DELETE FROM batch_requests WHERE job=?", (n,))
            c.execute("DELETE FROM batch_jobs WHERE n=?", (n,))

        self.store.write_now(op)

    def end_job(self, n: int, outcomes: Iterable[tuple[str, str, dict[str, Any] | None]], status: str,
                counts: dict[str, int]) -> None:
        """Queue batch `n`'s end (state `ended`), with each request's (custom_id, state, error or None); a request
        not in `outcomes` becomes `expired`. The budget holds of its requests go: one that ended without an
        answer was not charged. Queued behind the writes already queued, so it is never durable
        without them."""
        rows = [(state, json.dumps(error) if error is not None else None, cid, n) for cid, state, error in outcomes]
        blob = json.dumps(counts, sort_keys=True)

        def op(c: sqlite3.Connection) -> None:
            c.executemany("UPDATE batch_requests SET state=?, error=? WHERE custom_id=? AND job=?", rows)
            c.execute("UPDATE batch_requests SET state='expired' WHERE job=? AND state='sent'", (n,))
            c.execute("UPDATE batch_jobs SET state='ended', ended=?, status=?, counts=? WHERE n=?",
                      (time.time(), status, blob, n))
            c.execute(RELEASE_HOLDS, (n,))  # the answered ones went with their answers (`Store.add_call`)

        self.store.enqueue(op)
