"""What a batch job keeps in the run's store (`cai.store.batch`): its provider batches and the requests in them
(one row per request sent, matched to results by `custom_id`).

A job row is written, with its requests, before anything is sent to the provider (`creating`); the batch id
is written the moment the provider returns it (`open`); a batch's results are written with its end
(`ended`) after the answers they carry, so a crash at any point leaves either the intent (recovered by
listing the provider's batches), the open batch (polled again) or the stored results.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from cai.errors import ProviderError, RequestRejected
from cai.providers.base import http_error
from cai.store import Store
from cai.store.batch import BatchTables

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
    def of(cls, row: dict[str, Any]) -> Job:
        return cls(**row)


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
        self.tables = BatchTables(store)

    def exists(self) -> bool:
        return self.tables.exists()

    def jobs(self, *states: str) -> list[Job]:
        return [Job.of(r) for r in self.tables.jobs(states)]

    def history(self) -> dict[str, History]:
        """Per cache key: how often it was sent, failed, and whether it is in a batch not yet ended."""
        out: dict[str, History] = {}
        for key, cid, state, error, job_state in self.tables.sent():
            h = out.setdefault(key, History())
            h.sent += 1
            h.rows.append(cid)
            h.last_state = state
            if state == "sent" and job_state in OPEN_STATES:
                h.in_flight = True
            if state == "failed":
                h.failures += 1
                h.last_error = error or {}
        return out

    def job(self, n: int) -> Job:
        return next(j for j in self.jobs() if j.n == n)

    def requests(self, job: int) -> dict[str, dict[str, Any]]:
        return self.tables.requests(job)

    def pending_records(self) -> list[tuple[int, str, list[dict[str, str]], dict[str, Any]]]:
        """(idx, id, messages, extra) of the run's records neither done nor failed, in input order."""
        return self.store.pending_records()

    def in_flight(self) -> list[tuple[str, int, str, int]]:
        """(stage, round, job state, requests) of the requests in batches not yet ended."""
        return self.tables.in_flight(OPEN_STATES)

    def calls_in_flight(self) -> int:
        """Requests in batches not yet ended (their answers may still come, and be paid for)."""
        return sum(n for *_, n in self.in_flight())

    def request_counts(self) -> dict[str, int]:
        return self.tables.request_counts()

    # -- writes (each one transaction, durable when it returns) ------------------------------
    def add_job(self, token: str, provider: str, model: str, rows: Iterable[dict[str, Any]]) -> int:
        """Store a batch about to be created, with its requests (state `sent`); returns its number."""
        return self.tables.add_job(token, provider, model, list(rows))

    def update_job(self, n: int, **fields: Any) -> None:
        self.tables.update_job(n, fields)

    def drop_job(self, n: int) -> None:
        """Forget a batch the provider never created (its requests are collected again)."""
        self.tables.drop_job(n)

    def end_job(self, n: int, outcomes: Iterable[Outcome], status: str, counts: dict[str, int]) -> None:
        """Queue the batch's end with what became of each request, behind the answers already queued (the
        store commits in order, so the end is never durable without them). A request the results do not
        mention is sent again (as if expired)."""
        self.tables.end_job(n, [(o.custom_id, o.state, {"status": o.status, "message": o.message}
                                 if o.state == "failed" else None) for o in outcomes], status, counts)
