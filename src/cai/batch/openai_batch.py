"""OpenAI's Files + Batches API (`/v1/chat/completions` lines) for batch jobs, through the openai SDK."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import openai
from openai.types.chat import ChatCompletion

from cai.batch.apis import LIST_LIMIT, BatchBase, Found, Poll
from cai.batch.ledger import Job, Outcome
from cai.calls import Completion, Request
from cai.errors import ProviderError
from cai.providers.base import Model
from cai.providers.openai_api import STRUCTURED_MODES, OpenAIModel, mentions_format

OPENAI_ENDPOINT = "/v1/chat/completions"
# Codes of a line with `"response": null`: these two are requests never run, sent again as they were ...
RESENT = {"batch_expired": "expired", "batch_cancelled": "canceled"}
# ... the others (in `error.code`, else `error.type`) → the HTTP status the synchronous API answers them with.
OPENAI_STATUS = {"request_timeout": 408, "timeout": 408, "rate_limit_exceeded": 429, "rate_limit_error": 429,
                 "insufficient_quota": 429, "server_error": 500, "api_error": 500, "service_unavailable": 503,
                 "invalid_request": 400, "invalid_request_error": 400, "context_length_exceeded": 400,
                 "invalid_prompt": 400, "invalid_api_key": 401, "authentication_error": 401,
                 "permission_denied": 403, "permission_error": 403, "not_found": 404, "model_not_found": 404,
                 "not_found_error": 404}


class Batches(BatchBase):
    provider = "openai"
    sdk = openai
    max_requests = 50_000  # OpenAI's limits for one batch: requests, and the input file's size (200 MB)
    max_bytes = 190_000_000

    def __init__(self, model: Model, max_retries: int) -> None:
        assert isinstance(model, OpenAIModel)
        super().__init__(model, max_retries)
        self.m = model

    def remembered(self) -> str | None:
        return self.m.structured_mode

    def restore(self, state: str | None) -> None:
        for _ in STRUCTURED_MODES:  # move along the fallback chain to the mode an earlier pass settled on
            if state is None or self.m.structured_mode == state:
                return
            self.m.refused_mode(self.m.structured_mode)

    def item(self, custom_id: str, request: Request) -> tuple[dict[str, Any], str | None]:
        mode = self.m.structured_mode if request.schema is not None else None
        return ({"custom_id": custom_id, "method": "POST", "url": OPENAI_ENDPOINT,
                 "body": self.m.body(request, mode)}, mode)

    async def create(self, token: str, items: list[dict[str, Any]], on_file: Callable[[str], None]) -> str:
        client = self.m.client()
        data = "".join(json.dumps(i, ensure_ascii=False) + "\n" for i in items).encode()
        f = await self._call("files.create", lambda: client.files.create(file=(f"cai-{token}.jsonl", data),
                                                                         purpose="batch"))
        on_file(f.id)
        b = await self._create_once("batches.create", lambda: client.batches.create(
            input_file_id=f.id, endpoint=OPENAI_ENDPOINT, completion_window="24h", metadata={"cai_job": token}))
        return b.id

    async def find(self, job: Job, known: set[str]) -> Found:
        client, seen = self.m.client(), 0
        page = await self._call("batches.list", lambda: client.batches.list(limit=100))
        while True:
            for b in page.data:
                seen += 1
                if (b.metadata or {}).get("cai_job") == job.token:
                    return Found(b.id)
            if seen >= LIST_LIMIT or not page.has_next_page():
                return Found()
            page = await self._call("batches.list", page.get_next_page)

    async def poll(self, batch_id: str) -> Poll:
        b = await self._call("batches.retrieve", lambda: self.m.client().batches.retrieve(batch_id))
        rc = b.request_counts
        counts = {"total": rc.total, "completed": rc.completed, "failed": rc.failed} if rc else {}
        return Poll(b.status in ("completed", "failed", "expired", "cancelled"), b.status, counts)

    async def results(self, job: Job, requests: dict[str, dict[str, Any]]
                      ) -> AsyncIterator[tuple[Outcome, Completion | None]]:
        client = self.m.client()
        b = await self._call("batches.retrieve", lambda: client.batches.retrieve(job.batch_id or ""))
        if b.status == "failed":  # the input file was refused: every request failed with the batch's errors
            errors = "; ".join(f"line {e.line}: {e.message}" for e in (b.errors.data if b.errors else []) or [])
            why = f"batch {b.id} was refused: {errors or 'no reason given'}"
            for cid in requests:  # often passing (e.g. the enqueued-token limit): retried like a 503
                yield Outcome(cid, "failed", 503, why), None
            return
        for file_id in (b.output_file_id, b.error_file_id):
            if not file_id:
                continue
            content = await self._call("files.content", lambda f=file_id: client.files.content(f))
            for raw in content.text.splitlines():
                if raw.strip():
                    yield self._line(json.loads(raw), requests)

    def _line(self, line: dict[str, Any], requests: dict[str, dict[str, Any]]) -> tuple[Outcome, Completion | None]:
        """What one output/error-file line says of its request (see `_line_error` for the failed ones)."""
        cid = str(line.get("custom_id"))
        resp = line.get("response") if isinstance(line.get("response"), dict) else {}
        status, body = resp.get("status_code"), resp.get("body")
        mode = (requests.get(cid) or {}).get("mode")
        if status == 200:
            try:
                comp = self.m.completion(ChatCompletion.model_validate(body), mode, True, self.where)
            except (ProviderError, ValueError) as e:
                return Outcome(cid, "failed", 500, f"unreadable answer: {e}"), None
            return Outcome(cid, "done"), comp.model_copy(update={"batch": True})
        outcome = _line_error(cid, status, body, line.get("error"))
        if (outcome.state == "failed" and mode not in (None, "prompt") and outcome.status in (400, 422, 500)
                and mentions_format(outcome.message or "")):
            self.m.refused_mode(mode)
            return Outcome(cid, "refused_mode", outcome.status, outcome.message), None
        return outcome, None

    async def cancel(self, batch_id: str) -> None:
        await self._call("batches.cancel", lambda: self.m.client().batches.cancel(batch_id))

    async def forget(self, job: Job) -> None:
        """Delete the batch's input, output and error files (its results are stored); best effort."""
        client = self.m.client()
        try:
            b = await self._call("batches.retrieve", lambda: client.batches.retrieve(job.batch_id or ""))
            for file_id in {job.file_id, b.input_file_id, b.output_file_id, b.error_file_id} - {None}:
                await self._call("files.delete", lambda f=file_id: client.files.delete(f))
        except ProviderError:
            pass  # a file left behind costs storage only; the next job does not need it


def _line_error(cid: str, status: Any, body: Any, error: Any) -> Outcome:
    """The outcome of a line without an answer. With an HTTP status (`response.status_code`), that status.
    Without one (`"response": null`), its `error.code` (else `error.type`): batch_expired / batch_cancelled
    are sent again as they were; a known code stands for the status the synchronous API answers it with, any
    other (or none) for a 500. The status then decides retry or not as for a synchronous call."""
    err = error if isinstance(error, dict) else {}
    text = _openai_message(body) or err.get("message")
    if isinstance(status, int):
        return Outcome(cid, "failed", status, text or f"HTTP {status}")
    code = err.get("code") or err.get("type")
    if code in RESENT:
        return Outcome(cid, RESENT[code])
    return Outcome(cid, "failed", OPENAI_STATUS.get(str(code), 500), f"{code or 'error'}: {text or 'no message'}")


def _openai_message(body: Any) -> str | None:
    if isinstance(body, dict):
        err = body.get("error", body)
        return str(err.get("message") or err) if isinstance(err, dict) else str(err)
    return None
