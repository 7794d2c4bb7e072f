"""A loopback OpenAI Files + Batches and Anthropic Message Batches server for batch-job tests.

`BatchServer` is a `StubServer` (chat completions and messages are still answered synchronously, faults and
holds work as there) that also serves what the real SDKs call for batch jobs:

* OpenAI (base_url `srv.url`): `POST /v1/files` (multipart), `GET /v1/files`, `GET|DELETE /v1/files/{id}`,
  `GET /v1/files/{id}/content`; `POST /v1/batches`, `GET /v1/batches`, `GET /v1/batches/{id}`,
  `POST /v1/batches/{id}/cancel`. Only the `/v1/chat/completions` endpoint is answered inside a batch.
* Anthropic (base_url `srv.anthropic_url`): `POST|GET /v1/messages/batches`, `GET|DELETE
  /v1/messages/batches/{id}`, `POST /v1/messages/batches/{id}/cancel`, `GET /v1/messages/batches/{id}/results`.

Every request inside a batch is answered exactly as the StubServer answers the same body synchronously
(`_openai_reply` / `_anthropic_reply`: json_schema, forced tool use, max_tokens cuts, `reply_fn`, cache usage).

Nothing moves by itself and nothing reads the wall clock: a batch stays where it is until the test calls
`advance` / `finish_all` / `expire`, and timestamps come from a logical clock (`EPOCH`, one second per event).
Faults on the batch endpoints reuse `add_fault`; there `when(route, body)` gets the route name ("batches.create",
"messages.batches.results", ... see ROUTES) instead of the path; `fault_on(route, kind)` is the shorthand.
"""

from __future__ import annotations

import email.policy
import itertools
import json
import re
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.parser import BytesParser
from typing import Any
from urllib.parse import parse_qs, urlsplit

from servers import Fault, StubServer, _Handler, error_body

EPOCH = 1_750_000_000  # the logical clock's start (2025-06-15T15:06:40Z)
DAY = 24 * 3600

# (method, path pattern, route name): the names follow the SDK methods that call them
ROUTES: tuple[tuple[str, str, str], ...] = (
    ("POST", r"/v1/files", "files.create"),
    ("GET", r"/v1/files", "files.list"),
    ("GET", r"/v1/files/([^/]+)", "files.retrieve"),
    ("DELETE", r"/v1/files/([^/]+)", "files.delete"),
    ("GET", r"/v1/files/([^/]+)/content", "files.content"),
    ("POST", r"/v1/batches", "batches.create"),
    ("GET", r"/v1/batches", "batches.list"),
    ("GET", r"/v1/batches/([^/]+)", "batches.retrieve"),
    ("POST", r"/v1/batches/([^/]+)/cancel", "batches.cancel"),
    ("POST", r"/v1/messages/batches", "messages.batches.create"),
    ("GET", r"/v1/messages/batches", "messages.batches.list"),
    ("GET", r"/v1/messages/batches/([^/]+)", "messages.batches.retrieve"),
    ("DELETE", r"/v1/messages/batches/([^/]+)", "messages.batches.delete"),
    ("POST", r"/v1/messages/batches/([^/]+)/cancel", "messages.batches.cancel"),
    ("GET", r"/v1/messages/batches/([^/]+)/results", "messages.batches.results"),
)
_ROUTES = [(m, re.compile(p + r"/?"), name) for m, p, name in ROUTES]
ROUTE_NAMES = tuple(name for _, _, name in ROUTES)

OPENAI_ENDPOINT = "/v1/chat/completions"
ACTIVE = ("validating", "in_progress", "finalizing", "cancelling", "canceling")  # both APIs' open states
CUSTOM_ID = re.compile(r"[a-zA-Z0-9_-]{1,64}")  # Anthropic's documented custom_id pattern
EXPIRED_MESSAGE = "This request could not be executed before the batch's completion window expired."


def rfc3339(t: int | None) -> str | None:
    return None if t is None else datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class _BatchHandler(_Handler):
    def do_DELETE(self) -> None:
        self._dispatch("DELETE")


@dataclass
class StoredFile:
    id: str
    filename: str
    purpose: str
    data: bytes
    created_at: int
    expires_at: int | None = None

    def obj(self) -> dict[str, Any]:
        return {"id": self.id, "object": "file", "bytes": len(self.data), "created_at": self.created_at,
                "filename": self.filename, "purpose": self.purpose, "status": "processed",
                "expires_at": self.expires_at, "status_details": None}


@dataclass
class BatchRequest:
    """One request of a batch: `body` is the OpenAI line's body or the Anthropic request's params."""

    custom_id: str
    body: Any
    line: int  # 1-based line of the input file (OpenAI) or position in `requests` (Anthropic)
    state: str = "pending"  # pending | succeeded | failed (errored) | canceled | expired
    output: dict[str, Any] | None = None  # the output/error-file line (OpenAI) or results line (Anthropic)


@dataclass
class Batch:
    id: str
    api: str  # "openai" | "anthropic"
    status: str  # OpenAI `status`; Anthropic `processing_status`
    created_at: int
    requests: list[BatchRequest]
    submitted: int  # requests (non-blank input lines) the client sent
    metadata: dict[str, str] | None = None
    input_file_id: str | None = None
    endpoint: str = OPENAI_ENDPOINT
    completion_window: str = "24h"
    model: str | None = None
    problems: list[dict[str, Any]] = field(default_factory=list)  # input-file errors found when validating
    times: dict[str, int] = field(default_factory=dict)  # in_progress_at, ended_at, ... as they happen
    output_file_id: str | None = None
    error_file_id: str | None = None
    errors: list[dict[str, Any]] | None = None
    deleted: bool = False

    @property
    def ended(self) -> bool:
        return self.status not in ACTIVE

    def count(self, state: str) -> int:
        return sum(1 for r in self.requests if r.state == state)


@dataclass
class RequestFailure:
    """A rule of `fail_requests`: requests it matches fail with `status`, or in the form `code` names, when
    they are answered."""

    when: Callable[[str, Any], bool]
    status: int
    message: str | None
    remaining: int | None  # None: every match
    code: str | None = None


class BatchServer(StubServer):
    """StubServer + the OpenAI Files/Batches and Anthropic Message Batches APIs, moved along by the test.

    Control (all synchronous, deterministic):
      advance(batch_id=None, requests=None, finish=True) -> answered   one step for one batch, or all
      finish_all()                     every open batch to its end (completed / cancelled / ended)
      fail_requests(when, status=500)  requests with when(custom_id, body) fail when answered (code=: other forms)
      expire(batch_id=None)            end open batches as expired, the answered requests keep their results
      fault_on(route, kind, times=1)   a StubServer fault on one batch endpoint ("lost": acted on, reply lost)
    Counters: files_uploaded, batches_created, result_downloads, submitted[batch_id], downloads[file or batch id],
    calls[route] (every call received, faulted ones included); `batch(id)` / `batches()` give the records.
    """

    handler_class = _BatchHandler

    def __init__(self, *args: Any, results_order: str = "input", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if results_order not in ("input", "reversed"):
            raise ValueError("results_order must be 'input' or 'reversed'")
        self.results_order = results_order  # order of the lines in output/error files and results
        self._blk = threading.RLock()  # batch state; never held while taking the base server's lock
        self._clock = EPOCH
        self._serials: dict[str, itertools.count[int]] = {}
        self.files: dict[str, StoredFile] = {}
        self._batches: dict[str, Batch] = {}
        self.failures: list[RequestFailure] = []
        self.files_uploaded = 0
        self.batches_created = 0
        self.result_downloads = 0
        self.submitted: dict[str, int] = {}
        self.downloads: Counter[str] = Counter()
        self.calls: Counter[str] = Counter()

    # control -----------------------------------------------------------------------------------
    def advance(self, batch_id: str | None = None, requests: int | None = None, finish: bool = True) -> int:
        """Move one batch (or every open batch, in creation order) one step; returns the requests answered.

        OpenAI: `validating` is validated (-> `failed` with `errors`, or `in_progress`); then up to `requests`
        of its pending requests are answered (all when None); with none left it goes to `finalizing` and, when
        `finish`, on to `completed` with its output/error files. `cancelling` becomes `cancelled`.
        Anthropic: the same without the validating step; it ends (`ended`, `results_url`) when none are left and
        `finish`; `canceling` ends with the pending requests canceled. So `advance(requests=0)` only starts
        batches, and `advance(finish=False)` answers everything but leaves the batches open."""
        answered = 0
        with self._blk:
            for b in self._targets(batch_id):
                if b.status == "validating":
                    self._validate(b)
                    if b.status == "failed":
                        continue
                if b.status in ("cancelling", "canceling"):
                    self._end(b, "cancelled" if b.api == "openai" else "ended", "canceled")
                    continue
                if b.status == "in_progress":
                    pending = [r for r in b.requests if r.state == "pending"]
                    for r in pending[: len(pending) if requests is None else max(0, requests)]:
                        self._answer_request(b, r)
                        answered += 1
                    if any(r.state == "pending" for r in b.requests):
                        continue
                    if b.api == "openai":
                        b.status = "finalizing"
                        b.times["finalizing_at"] = self._tick()
                    elif finish:
                        self._end(b, "ended", None)
                        continue
                if b.status == "finalizing" and finish:
                    self._end(b, "completed", None)
        return answered

    def finish_all(self) -> int:
        """Every open batch to its end: answered in full, or its cancellation completed. Returns requests answered."""
        return self.advance(None)

    def expire(self, batch_id: str | None = None) -> None:
        """End open batches (one, or all) as expired: answered requests keep their results; the pending ones
        become `batch_expired` lines in the error file (OpenAI) or `expired` results (Anthropic)."""
        with self._blk:
            for b in self._targets(batch_id):
                self._end(b, "expired" if b.api == "openai" else "ended", "expired")

    def fail_requests(self, when: Callable[[str, Any], bool], status: int = 500, message: str | None = None,
                      times: int | None = None, code: str | None = None) -> RequestFailure:
        """Requests inside batches for which `when(custom_id, body)` is true fail when answered (the next `times`
        of them; all when None): OpenAI writes an error-file line whose response has `status_code` `status`,
        Anthropic an `errored` result with the matching error type. With `code`, the other forms instead:
        OpenAI a line with `"response": null` and `"error": {"code": code, "message": ...}` (batch_expired,
        batch_cancelled, server_error, ...); Anthropic the result type `code` for "expired" / "canceled", else
        an `errored` result whose error type is `code` (overloaded_error, billing_error, ...)."""
        rule = RequestFailure(when, status, message, times, code)
        with self._blk:
            self.failures.append(rule)
        return rule

    def fault_on(self, route: str, kind: str, times: int = 1, retry_after: float | None = None) -> Fault:
        """A StubServer fault for the next `times` calls of one batch endpoint, e.g. ("batches.create", "500")
        or ("messages.batches.create", "lost"): created, but the client never gets the reply."""
        if route not in ROUTE_NAMES:
            raise ValueError(f"unknown route {route!r} (known: {', '.join(ROUTE_NAMES)})")
        return self.add_fault(kind, times, lambda r, body, want=route: r == want, retry_after)

    def batch(self, batch_id: str) -> Batch:
        with self._blk:
            return self._batches[batch_id]

    def batches(self, api: str | None = None) -> list[Batch]:
        """Every batch created (deleted ones included), oldest first; only one API's when `api` is given."""
        with self._blk:
            return [b for b in self._batches.values() if api is None or b.api == api]

    def object(self, batch_id: str) -> dict[str, Any]:
        """The batch as its API shows it (an OpenAI `batch` or an Anthropic `message_batch`)."""
        with self._blk:
            b = self._batches[batch_id]
            return self._openai_obj(b) if b.api == "openai" else self._anthropic_obj(b)

    # state changes (under self._blk) -------------------------------------------------------------
    def _tick(self) -> int:
        self._clock += 1
        return self._clock

    def _next(self, prefix: str) -> str:
        return f"{prefix}{next(self._serials.setdefault(prefix, itertools.count(1))):06d}"

    def _targets(self, batch_id: str | None) -> list[Batch]:
        if batch_id is not None:
            b = self._batches[batch_id]
            return [] if b.ended else [b]
        return [b for b in self._batches.values() if not b.ended]

    def _validate(self, b: Batch) -> None:
        if b.problems:
            b.status = "failed"
            b.errors = b.problems
            b.times["failed_at"] = self._tick()
        else:
            b.status = "in_progress"
            b.times["in_progress_at"] = self._tick()

    def _failure(self, r: BatchRequest) -> RequestFailure | None:
        for rule in self.failures:
            if rule.remaining is not None and rule.remaining <= 0:
                continue
            try:
                hit = rule.when(r.custom_id, r.body)
            except Exception:
                hit = False
            if hit:
                if rule.remaining is not None:
                    rule.remaining -= 1
                return rule
        return None

    def _answer_request(self, b: Batch, r: BatchRequest) -> None:
        rule = self._failure(r)
        problem = _params_problem(b.api, r.body)
        status, message = (rule.status, rule.message) if rule is not None else (400, problem)
        request_id = self._next("req_stub")
        if rule is None and problem is None:
            r.state = "succeeded"
            if b.api == "openai":
                r.output = {"id": self._next("batch_req_stub"), "custom_id": r.custom_id, "error": None,
                            "response": {"status_code": 200, "request_id": request_id,
                                         "body": self._openai_reply(r.body, False)}}
            else:
                r.output = {"custom_id": r.custom_id,
                            "result": {"type": "succeeded", "message": self._anthropic_reply(r.body, False)}}
            return
        if rule is not None and rule.code is not None:
            self._fail_with_code(b, r, rule.code, message, request_id)
            return
        r.state = "failed"
        if b.api == "openai":
            r.output = {"id": self._next("batch_req_stub"), "custom_id": r.custom_id, "error": None,
                        "response": {"status_code": status, "request_id": request_id,
                                     "body": error_body("openai", status, message)}}
        else:
            r.output = {"custom_id": r.custom_id, "result": {
                "type": "errored", "error": {**error_body("anthropic", status, message), "request_id": request_id}}}

    def _fail_with_code(self, b: Batch, r: BatchRequest, code: str, message: str | None, request_id: str) -> None:
        """`r` ends in the form `code` names (see `fail_requests`)."""
        if b.api == "openai":
            r.state = {"batch_expired": "expired", "batch_cancelled": "canceled"}.get(code, "failed")
            text = message or (EXPIRED_MESSAGE if code == "batch_expired" else f"{code} (injected fault).")
            r.output = {"id": self._next("batch_req_stub"), "custom_id": r.custom_id, "response": None,
                        "error": {"code": code, "message": text}}
        elif code in ("expired", "canceled"):
            r.state = code
            r.output = {"custom_id": r.custom_id, "result": {"type": code}}
        else:
            r.state = "failed"
            r.output = {"custom_id": r.custom_id, "result": {"type": "errored", "error": {
                "type": "error", "error": {"type": code, "message": message or f"{code} (injected fault)."},
                "request_id": request_id}}}

    def _end(self, b: Batch, status: str, unfinished: str | None) -> None:
        """End `b` with `status`; its pending requests become `unfinished` (canceled / expired)."""
        now = self._tick()
        for r in b.requests:
            if r.state != "pending":
                continue
            if unfinished is None:
                raise AssertionError(f"batch {b.id} ends with requests pending")
            r.state = unfinished
            if b.api == "anthropic":
                r.output = {"custom_id": r.custom_id, "result": {"type": unfinished}}
            elif unfinished == "expired":
                r.output = {"id": self._next("batch_req_stub"), "custom_id": r.custom_id, "response": None,
                            "error": {"code": "batch_expired", "message": EXPIRED_MESSAGE}}
        b.status = status
        if b.api == "anthropic":
            b.times["ended_at"] = now
            return
        b.times[{"completed": "completed_at", "cancelled": "cancelled_at", "expired": "expired_at"}[status]] = now
        if status == "completed":
            b.times.setdefault("finalizing_at", now)
        ok = [r.output for r in self._ordered(b) if r.state == "succeeded" and r.output]
        bad = [r.output for r in self._ordered(b) if r.state != "succeeded" and r.output]
        if ok:
            b.output_file_id = self._store(f"batch_{b.id}_output.jsonl", "batch_output", _jsonl(ok)).id
        if bad:
            b.error_file_id = self._store(f"batch_{b.id}_error.jsonl", "batch_output", _jsonl(bad)).id

    def _ordered(self, b: Batch) -> list[BatchRequest]:
        return list(reversed(b.requests)) if self.results_order == "reversed" else list(b.requests)

    def _store(self, filename: str, purpose: str, data: bytes, expires_after: int | None = None) -> StoredFile:
        now = self._tick()
        f = StoredFile(self._next("file-stub"), filename, purpose, data, now,
                       now + expires_after if expires_after else None)
        self.files[f.id] = f
        return f

    # objects -----------------------------------------------------------------------------------
    def _openai_obj(self, b: Batch) -> dict[str, Any]:
        ok = [r.output["response"]["body"].get("usage") or {} for r in b.requests
              if r.state == "succeeded" and r.output]
        inp = sum(int(u.get("prompt_tokens", 0)) for u in ok)
        out = sum(int(u.get("completion_tokens", 0)) for u in ok)
        cached = sum(int((u.get("prompt_tokens_details") or {}).get("cached_tokens", 0)) for u in ok)
        counted = b.status != "failed"
        obj: dict[str, Any] = {
            "id": b.id, "object": "batch", "endpoint": b.endpoint, "model": b.model,
            "errors": {"object": "list", "data": b.errors} if b.errors else None,
            "input_file_id": b.input_file_id, "completion_window": b.completion_window, "status": b.status,
            "output_file_id": b.output_file_id, "error_file_id": b.error_file_id, "created_at": b.created_at,
            "expires_at": b.created_at + DAY, "metadata": b.metadata,
            "request_counts": {"total": len(b.requests) if counted else 0, "completed": b.count("succeeded"),
                               "failed": b.count("failed")},
            "usage": {"input_tokens": inp, "input_tokens_details": {"cached_tokens": cached},
                      "output_tokens": out, "output_tokens_details": {"reasoning_tokens": 0},
                      "total_tokens": inp + out},
        }
        for key in ("in_progress_at", "finalizing_at", "completed_at", "failed_at", "expired_at", "cancelling_at",
                    "cancelled_at"):
            obj[key] = b.times.get(key)
        return obj

    def _anthropic_obj(self, b: Batch) -> dict[str, Any]:
        ended = b.status == "ended"
        counts = {"processing": 0 if ended else len(b.requests),
                  "succeeded": b.count("succeeded") if ended else 0, "errored": b.count("failed") if ended else 0,
                  "canceled": b.count("canceled") if ended else 0, "expired": b.count("expired") if ended else 0}
        return {"id": b.id, "type": "message_batch", "processing_status": b.status, "request_counts": counts,
                "ended_at": rfc3339(b.times.get("ended_at")), "created_at": rfc3339(b.created_at),
                "expires_at": rfc3339(b.created_at + DAY), "archived_at": None,
                "cancel_initiated_at": rfc3339(b.times.get("cancel_initiated_at")),
                "results_url": f"{self.base}/v1/messages/batches/{b.id}/results" if ended else None}

    # HTTP --------------------------------------------------------------------------------------
    def handle(self, h: _Handler, method: str, path: str, body: bytes) -> None:
        route, arg = _route(method, path)
        if route is None:
            if method not in ("GET", "POST"):
                return h.send_json(404, error_body("openai", 404, f"no route for {method} {path}"))
            return super().handle(h, method, path, body)
        kind = "anthropic" if route.startswith("messages.") else "openai"
        parsed = _parse_body(route, h.headers.get("Content-Type") or "", body) if method == "POST" else None
        query = {k: v[-1] for k, v in parse_qs(urlsplit(h.path).query).items()}
        with self._blk:
            self.calls[route] += 1
        number = self._record(path, parsed, h) if method == "POST" else None
        try:
            if number is not None and not self._hold(number):
                h.close_connection = True
                return None
            fault = self._take_fault(route, parsed)
            return self._respond(h, kind, fault, lambda _notjson: self._serve(kind, route, arg, parsed, query))
        finally:
            if number is not None:
                self._answered()

    def _serve(self, kind: str, route: str, arg: str | None, body: Any, query: dict[str, str]) -> tuple[int, Any]:
        with self._blk:
            try:
                return getattr(self, "_r_" + route.replace(".", "_"))(arg, body, query)
            except _Refused as e:
                return e.status, error_body(kind, e.status, str(e))

    # OpenAI files
    def _r_files_create(self, _arg: Any, form: Any, _q: dict[str, str]) -> tuple[int, Any]:
        if not isinstance(form, dict) or not isinstance(form.get("file"), dict):
            raise _Refused(400, "expected a multipart/form-data body with a 'file' part")
        purpose = form.get("purpose")
        if purpose not in ("assistants", "batch", "fine-tune", "vision", "user_data", "evals"):
            raise _Refused(400, f"invalid purpose {purpose!r}")
        seconds = form.get("expires_after[seconds]")
        f = self._store(form["file"]["filename"] or "upload", purpose, form["file"]["data"],
                        int(seconds) if seconds and str(seconds).isdigit() else None)
        self.files_uploaded += 1
        return 200, f.obj()

    def _file(self, file_id: str) -> StoredFile:
        f = self.files.get(file_id)
        if f is None:
            raise _Refused(404, f"No such File object: {file_id}")
        return f

    def _r_files_retrieve(self, file_id: str, _b: Any, _q: dict[str, str]) -> tuple[int, Any]:
        return 200, self._file(file_id).obj()

    def _r_files_content(self, file_id: str, _b: Any, _q: dict[str, str]) -> tuple[int, Any]:
        f = self._file(file_id)
        self.downloads[file_id] += 1
        if f.purpose == "batch_output":
            self.result_downloads += 1
        return 200, f.data

    def _r_files_delete(self, file_id: str, _b: Any, _q: dict[str, str]) -> tuple[int, Any]:
        self._file(file_id)
        del self.files[file_id]
        return 200, {"id": file_id, "object": "file", "deleted": True}

    def _r_files_list(self, _arg: Any, _b: Any, q: dict[str, str]) -> tuple[int, Any]:
        files = [f for f in self.files.values() if "purpose" not in q or f.purpose == q["purpose"]]
        if q.get("order", "desc") == "desc":
            files.reverse()
        return 200, _cursor_page([f.obj() for f in files], q.get("after"), _limit(q, 10_000, 10_000))

    # OpenAI batches
    def _r_batches_create(self, _arg: Any, body: Any, _q: dict[str, str]) -> tuple[int, Any]:
        if not isinstance(body, dict):
            raise _Refused(400, "request body is not a JSON object")
        f = self._file(str(body.get("input_file_id")))
        if f.purpose != "batch":
            raise _Refused(400, f"file {f.id} has purpose {f.purpose!r}, not 'batch'")
        if body.get("endpoint") != OPENAI_ENDPOINT:
            raise _Refused(400, f"endpoint {body.get('endpoint')!r}: this server answers only {OPENAI_ENDPOINT}")
        if body.get("completion_window") != "24h":
            raise _Refused(400, "completion_window must be '24h'")
        metadata = body.get("metadata")
        _check_metadata(metadata)
        requests, problems, model, submitted = _read_input_file(f.data, OPENAI_ENDPOINT)
        b = Batch(self._next("batch_stub"), "openai", "validating", self._tick(), requests, submitted,
                  metadata=metadata, input_file_id=f.id, model=model, problems=problems)
        self._created(b)
        return 200, self._openai_obj(b)

    def _created(self, b: Batch) -> None:
        self._batches[b.id] = b
        self.batches_created += 1
        self.submitted[b.id] = b.submitted

    def _batch(self, api: str, batch_id: str) -> Batch:
        b = self._batches.get(batch_id)
        if b is None or b.api != api or b.deleted:
            raise _Refused(404, f"No batch found with id {batch_id!r}")
        return b

    def _r_batches_retrieve(self, batch_id: str, _b: Any, _q: dict[str, str]) -> tuple[int, Any]:
        return 200, self._openai_obj(self._batch("openai", batch_id))

    def _r_batches_list(self, _arg: Any, _b: Any, q: dict[str, str]) -> tuple[int, Any]:
        objs = [self._openai_obj(b) for b in reversed(self._batches.values()) if b.api == "openai"]
        return 200, _cursor_page(objs, q.get("after"), _limit(q, 20, 100))

    def _r_batches_cancel(self, batch_id: str, _b: Any, _q: dict[str, str]) -> tuple[int, Any]:
        b = self._batch("openai", batch_id)
        if b.status not in ("validating", "in_progress", "finalizing", "cancelling"):
            raise _Refused(400, f"Cannot cancel a batch with status {b.status!r}")
        if b.status != "cancelling":
            b.status = "cancelling"
            b.times["cancelling_at"] = self._tick()
        return 200, self._openai_obj(b)

    # Anthropic message batches
    def _r_messages_batches_create(self, _arg: Any, body: Any, _q: dict[str, str]) -> tuple[int, Any]:
        if not isinstance(body, dict):
            raise _Refused(400, "request body is not a JSON object")
        extra = sorted(set(body) - {"requests"})
        if extra:
            raise _Refused(400, f"{extra[0]}: Extra inputs are not permitted")
        items = body.get("requests")
        if not isinstance(items, list) or not items:
            raise _Refused(400, "requests: a non-empty list is required")
        requests: list[BatchRequest] = []
        seen: set[str] = set()
        for i, item in enumerate(items):
            cid = item.get("custom_id") if isinstance(item, dict) else None
            if not isinstance(cid, str) or not CUSTOM_ID.fullmatch(cid):
                raise _Refused(400, f"requests.{i}.custom_id: must match ^[a-zA-Z0-9_-]{{1,64}}$")
            if cid in seen:
                raise _Refused(400, f"requests.{i}.custom_id: duplicate custom_id {cid!r}")
            if not isinstance(item.get("params"), dict):
                raise _Refused(400, f"requests.{i}.params: an object is required")
            seen.add(cid)
            requests.append(BatchRequest(cid, item["params"], i + 1))
        b = Batch(self._next("msgbatch_stub"), "anthropic", "in_progress", self._tick(), requests, len(requests))
        self._created(b)
        return 200, self._anthropic_obj(b)

    def _r_messages_batches_retrieve(self, batch_id: str, _b: Any, _q: dict[str, str]) -> tuple[int, Any]:
        return 200, self._anthropic_obj(self._batch("anthropic", batch_id))

    def _r_messages_batches_list(self, _arg: Any, _b: Any, q: dict[str, str]) -> tuple[int, Any]:
        objs = [self._anthropic_obj(b) for b in reversed(self._batches.values())
                if b.api == "anthropic" and not b.deleted]
        limit = _limit(q, 20, 1000)
        ids = [o["id"] for o in objs]
        if q.get("before_id"):
            end = ids.index(q["before_id"]) if q["before_id"] in ids else 0
            page, more = objs[max(0, end - limit):end], end - limit > 0
        else:
            start = ids.index(q["after_id"]) + 1 if q.get("after_id") in ids else 0
            page, more = objs[start:start + limit], start + limit < len(objs)
        return 200, {"data": page, "has_more": more, "first_id": page[0]["id"] if page else None,
                     "last_id": page[-1]["id"] if page else None}

    def _r_messages_batches_cancel(self, batch_id: str, _b: Any, _q: dict[str, str]) -> tuple[int, Any]:
        b = self._batch("anthropic", batch_id)
        if b.status == "ended":
            raise _Refused(400, f"Message batch {batch_id} has already ended")
        if b.status != "canceling":
            b.status = "canceling"
            b.times["cancel_initiated_at"] = self._tick()
        return 200, self._anthropic_obj(b)

    def _r_messages_batches_delete(self, batch_id: str, _b: Any, _q: dict[str, str]) -> tuple[int, Any]:
        b = self._batch("anthropic", batch_id)
        if b.status != "ended":
            raise _Refused(400, f"Message batch {batch_id} is still processing; cancel it first")
        b.deleted = True
        return 200, {"id": batch_id, "type": "message_batch_deleted"}

    def _r_messages_batches_results(self, batch_id: str, _b: Any, _q: dict[str, str]) -> tuple[int, Any]:
        b = self._batch("anthropic", batch_id)
        if b.status != "ended":
            raise _Refused(400, f"Message batch {batch_id} is still processing; its results are not ready")
        self.downloads[batch_id] += 1
        self.result_downloads += 1
        return 200, _jsonl([r.output for r in self._ordered(b) if r.output])


class _Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


# -------------------------------------------------------------------------------------------------
# helpers


def _route(method: str, path: str) -> tuple[str | None, str | None]:
    for m, pattern, name in _ROUTES:
        hit = pattern.fullmatch(path)
        if m == method and hit:
            return name, (hit.group(1) if pattern.groups else None)
    return None, None


def _parse_body(route: str, ctype: str, body: bytes) -> Any:
    """A POST body: the form of a multipart upload ({name: text, or {"filename", "data"} for a file}), else JSON."""
    if route == "files.create":
        if not ctype.lower().startswith("multipart/form-data"):
            return None
        msg = BytesParser(policy=email.policy.HTTP).parsebytes(
            b"Content-Type: " + ctype.encode("latin-1") + b"\r\n\r\n" + body)
        form: dict[str, Any] = {}
        for part in msg.iter_parts():
            name = part.get_param("name", header="content-disposition")
            data = part.get_payload(decode=True) or b""
            filename = part.get_filename()
            form[str(name)] = {"filename": filename, "data": data} if filename is not None else data.decode()
        return form
    try:
        return json.loads(body) if body else {}
    except ValueError:
        return None


def _jsonl(rows: list[Any]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def _limit(q: dict[str, str], default: int, most: int) -> int:
    try:
        n = int(q.get("limit", default))
    except ValueError:
        n = 0
    if not 1 <= n <= most:
        raise _Refused(400, f"limit must be between 1 and {most}")
    return n


def _cursor_page(objs: list[dict[str, Any]], after: str | None, limit: int) -> dict[str, Any]:
    """An OpenAI cursor page: the `limit` objects after the one with id `after`."""
    ids = [o["id"] for o in objs]
    start = ids.index(after) + 1 if after in ids else 0
    page = objs[start:start + limit]
    return {"object": "list", "data": page, "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None, "has_more": start + limit < len(objs)}


def _check_metadata(metadata: Any) -> None:
    """OpenAI's rule: at most 16 pairs, string keys up to 64 characters, string values up to 512."""
    if metadata is None:
        return
    if not isinstance(metadata, dict) or len(metadata) > 16:
        raise _Refused(400, "metadata: an object with at most 16 keys is required")
    for k, v in metadata.items():
        if len(k) > 64 or not isinstance(v, str) or len(v) > 512:
            raise _Refused(400, f"metadata.{k}: keys are at most 64 characters, values strings of at most 512")


def _read_input_file(data: bytes, endpoint: str) -> tuple[list[BatchRequest], list[dict[str, Any]], str | None, int]:
    """(requests, problems, model, lines) of an OpenAI batch input file; problems fail the batch when validated."""
    requests: list[BatchRequest] = []
    problems: list[dict[str, Any]] = []
    models: set[str] = set()
    seen: set[str] = set()
    lines = 0

    def problem(code: str, message: str, line: int, param: str | None = None) -> None:
        problems.append({"code": code, "message": message, "param": param, "line": line})

    for n, raw in enumerate(data.decode("utf-8", "replace").splitlines(), 1):
        if not raw.strip():
            continue
        lines += 1
        try:
            row = json.loads(raw)
        except ValueError:
            problem("invalid_json_line", "This line is not parseable as valid JSON.", n)
            continue
        if not isinstance(row, dict):
            problem("invalid_json_line", "Each line must be a JSON object.", n)
            continue
        cid, body = row.get("custom_id"), row.get("body")
        if not isinstance(cid, str) or not cid:
            problem("missing_required_parameter", "custom_id is required.", n, "custom_id")
            continue
        if cid in seen:
            problem("duplicate_custom_id", f"The custom_id {cid!r} is not unique within the file.", n, "custom_id")
            continue
        if row.get("method") != "POST":
            problem("invalid_method", "method must be 'POST'.", n, "method")
            continue
        if row.get("url") != endpoint:
            problem("mismatched_endpoint", f"url must be the batch's endpoint {endpoint}.", n, "url")
            continue
        if not isinstance(body, dict) or not isinstance(body.get("model"), str):
            problem("missing_required_parameter", "body.model is required.", n, "body.model")
            continue
        seen.add(cid)
        models.add(body["model"])
        requests.append(BatchRequest(cid, body, n))
    if not lines:
        problem("empty_file", "The input file has no requests.", 0)
    if len(models) > 1:
        problem("mismatched_model", f"A batch uses one model; the file names {sorted(models)}.", 0, "body.model")
    return requests, problems, (min(models) if models else None), lines


def _params_problem(api: str, body: Any) -> str | None:
    """Why a request's body cannot be answered (a 400 inside the batch), or None."""
    if not isinstance(body, dict) or not isinstance(body.get("messages"), list) or not body["messages"]:
        return "messages: a non-empty list is required"
    if body.get("stream"):
        return "stream: not supported inside a batch"
    if api == "anthropic":
        if not isinstance(body.get("model"), str):
            return "model: Field required"
        if not isinstance(body.get("max_tokens"), int):
            return "max_tokens: Field required"
    return None
