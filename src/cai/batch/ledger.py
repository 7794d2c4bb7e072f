"""What a batch job keeps in the run's store: its provider batches (`batch_jobs`) and the requests in them
(`batch_requests`, one row per request sent, matched to results by `custom_id`).

A job row is written, with its requests, before anything is sent to the provider (`creating`); the batch id
is written the moment the provider returns it (`open`); a batch's results are written with its end
(`ended`) after the answers they carry, so a crash at any point leaves either the intent (recovered by
listing the provider's batches), the open batch (polled again) or the stored results.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from cai.errors import ProviderError, RequestRejected
from cai.providers.base import http_error
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
# Job states: creating (stored, not yet known to be created), open (batch id stored), ended (results stored).
OPEN_STATES = ("creating", "open")
# Request states: sent, done, failed (counts as an attempt), expired / canceled / refused_mode (sent again as
# they were: the request itself did not fail).


@dataclass
class Job:
    n: int
    token: str
    provider: str
    model: str
    state: str
    batch_id: str | None
    file_id: str | None
    requests: int
    created: float
    ended: float | None
    status: str | None
    counts: dict[str, int]
    note: str | None

    @classmethod
    def of(cls, row: tuple[Any, ...]) -> Job:
        *head, counts, note = row
        return cls(*head, json.loads(counts) if counts else {}, note)


@dataclass
class Outcome:
    """What became of one request of an ended batch."""

    custom_id: str
    state: str  # done | failed | expired | canceled | refused_mode
    status: int | None = None  # HTTP status of a failed request
    message: str | None = None


@dataclass
class History:
    """Every time one call (cache key) was sent in a batch."""

    sent: int = 0  # rows, whatever became of them (the next attempt number is sent + 1)
    failures: int = 0
    in_flight: bool = False
    last_state: str | None = None
    last_error: dict[str, Any] | None = None
    rows: list[str] = field(default_factory=list)


def error_of(err: dict[str, Any], provider: str, model: str) -> ProviderError:
    """The ProviderError a stored request failure stands for: its class decides retry (429, 408/409, 5xx) or
    failing the record (another 4xx). Inside a batch no status stops the job: a 401/403 fails its record (a
    bad key is refused by the batch API's own calls, which stop the tick), and a failure stored without a
    status counts as a 500."""
    e = http_error(int(err.get("status") or 500), err.get("message") or "the batch failed", "a provider batch",
                   provider=provider, model=model)
    if e.fatal:
        return RequestRejected(str(e), provider=provider, model=model, status=e.status)
    return e


class Ledger:
    """The batch tables of one run store (created on first use by a writable store)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        if not store.readonly:
            store.write_now(lambda c: [c.execute(s) for s in SCHEMA])

    def exists(self) -> bool:
        return self.store.read("SELECT 1 FROM sqlite_master WHERE name='batch_jobs'").fetchone() is not None

    def jobs(self, *states: str) -> list[Job]:
        if not self.exists():
            return []
        where = f"WHERE state IN ({','.join('?' * len(states))})" if states else ""
        rows = self.store.read("SELECT n, token, provider, model, state, batch_id, file_id, requests, created, ended, "
                               f"status, counts, note FROM batch_jobs {where} ORDER BY n", states)
        return [Job.of(r) for r in rows]

    def history(self) -> dict[str, History]:
        """Per cache key: how often it was sent, failed, and whether it is in a batch not yet ended."""
        out: dict[str, History] = {}
        if not self.exists():
            return out
        rows = self.store.read("SELECT r.key, r.custom_id, r.state, r.error, j.state FROM batch_requests r "
                               "JOIN batch_jobs j ON j.n = r.job ORDER BY r.attempt")
        for key, cid, state, error, job_state in rows:
            h = out.setdefault(key, History())
            h.sent += 1
            h.rows.append(cid)
            h.last_state = state
            if state == "sent" and job_state in OPEN_STATES:
                h.in_flight = True
            if state == "failed":
                h.failures += 1
                h.last_error = json.loads(error) if error else {}
        return out

    def job(self, n: int) -> Job:
        return next(j for j in self.jobs() if j.n == n)

    def requests(self, job: int) -> dict[str, dict[str, Any]]:
        rows = self.store.read("SELECT custom_id, key, role, record, stage, round, attempt, mode, state FROM "
                               "batch_requests WHERE job=?", (job,))
        names = ("custom_id", "key", "role", "record", "stage", "round", "attempt", "mode", "state")
        return {r[0]: dict(zip(names, r, strict=True)) for r in rows}

    def pending_records(self) -> list[tuple[int, str, list[dict[str, str]], dict[str, Any]]]:
        """(idx, id, messages, extra) of the run's records neither done nor failed, in input order."""
        rows = self.store.read("SELECT idx, id, messages, extra FROM records WHERE status='pending' ORDER BY idx")
        return [(i, r, json.loads(m), json.loads(e)) for i, r, m, e in rows]

    def in_flight(self) -> list[tuple[str, int, str, int]]:
        """(stage, round, job state, requests) of the requests in batches not yet ended."""
        if not self.exists():
            return []
        return list(self.store.read(
            "SELECT r.stage, r.round, j.state, COUNT(*) FROM batch_requests r JOIN batch_jobs j ON j.n = r.job "
            "WHERE r.state='sent' AND j.state IN ('creating','open') GROUP BY r.stage, r.round, j.state "
            "ORDER BY MIN(r.attempt), r.stage"))

    def calls_in_flight(self) -> int:
        """Requests in batches not yet ended (their answers may still come, and be paid for)."""
        return sum(n for *_, n in self.in_flight())

    def request_counts(self) -> dict[str, int]:
        if not self.exists():
            return {}
        return dict(self.store.read("SELECT state, COUNT(*) FROM batch_requests GROUP BY state"))

    # -- writes (each one transaction, durable when it returns) ------------------------------
    def add_job(self, token: str, provider: str, model: str, rows: Iterable[dict[str, Any]]) -> int:
        """Store a batch about to be created, with its requests (state `sent`); returns its number."""
        items = list(rows)
        out: list[int] = []

        def op(c: sqlite3.Connection) -> None:
            n = c.execute("INSERT INTO batch_jobs(token, provider, model, state, requests, created) "
                          "VALUES(?,?,?,'creating',?,?)", (token, provider, model, len(items), time.time())).lastrowid
            c.executemany("INSERT INTO batch_requests(custom_id, job, key, role, record, stage, round, attempt, mode, "
                          "state) VALUES(?,?,?,?,?,?,?,?,?,'sent')",
                          [(r["custom_id"], n, r["key"], r["role"], r["record"], r["stage"], r["round"],
                            r["attempt"], r.get("mode")) for r in items])
            out.append(int(n or 0))

        self.store.write_now(op)
        return out[0]

    def update_job(self, n: int, **fields: Any) -> None:
        if "counts" in fields:
            fields["counts"] = json.dumps(fields["counts"], sort_keys=True)
        sets = ", ".join(f"{k}=?" for k in fields)
        self.store.write_now(lambda c: c.execute(f"UPDATE batch_jobs SET {sets} WHERE n=?", (*fields.values(), n)))

    def drop_job(self, n: int) -> None:
        """Forget a batch the provider never created (its requests are collected again)."""
        self.store.write_now(lambda c: (c.execute("DELETE FROM batch_requests WHERE job=?", (n,)),
                                        c.execute("DELETE FROM batch_jobs WHERE n=?", (n,))))

    def end_job(self, n: int, outcomes: Iterable[Outcome], status: str, counts: dict[str, int]) -> None:
        """Queue the batch's end with what became of each request, behind the answers already queued (the
        store commits in order, so the end is never durable without them). A request the results do not
        mention is sent again (as if expired)."""
        rows = [(o.state, json.dumps({"status": o.status, "message": o.message}) if o.state == "failed" else None,
                 o.custom_id, n) for o in outcomes]
        blob = json.dumps(counts, sort_keys=True)

        def op(c: sqlite3.Connection) -> None:
            c.executemany("UPDATE batch_requests SET state=?, error=? WHERE custom_id=? AND job=?", rows)
            c.execute("UPDATE batch_requests SET state='expired' WHERE job=? AND state='sent'", (n,))
            c.execute("UPDATE batch_jobs SET state='ended', ended=?, status=?, counts=? WHERE n=?",
                      (time.time(), status, blob, n))

        self.store.enqueue(op)
