"""The providers' batch APIs, through their own SDKs: OpenAI Files + Batches (`/v1/chat/completions` lines) and
Anthropic Message Batches. Each adapter builds a request's batch item from the same parameters the model
sends synchronously, creates a batch, finds one again after a lost reply, polls, reads results and cancels.

Neither API takes an idempotency key, so a create is sent once (the SDK's own retries are off) and a lost
reply is recovered by listing: OpenAI batches carry `metadata.cai_job`; Anthropic batches carry no metadata,
so a candidate (same request count, not already this run's) is adopted only once its results show this
job's token in their custom ids.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import anthropic
import openai
from openai.types.chat import ChatCompletion

from cai.batch.ledger import Job, Outcome
from cai.config import Completion, Request
from cai.errors import InputError, ProviderError
from cai.providers.anthropic_api import AnthropicModel, completion
from cai.providers.base import Model, sdk_error
from cai.providers.openai_api import STRUCTURED_MODES, OpenAIModel, mentions_format
from cai.retry import with_retries

T = TypeVar("T")
OPENAI_ENDPOINT = "/v1/chat/completions"
LIST_LIMIT = 500  # batches looked at when recovering a lost create (newest first)
# Anthropic error types inside batch results → the HTTP status the synchronous API answers with.
ANTHROPIC_STATUS = {"invalid_request_error": 400, "authentication_error": 401, "permission_error": 403,
                    "not_found_error": 404, "request_too_large": 413, "rate_limit_error": 429, "api_error": 500,
                    "overloaded_error": 529}


@dataclass
class Poll:
    ended: bool
    status: str
    counts: dict[str, int]


@dataclass
class Found:
    """What listing found for a job whose create reply was lost: `batch_id` (adopt it), else `waiting` for
    candidates to end before they can be told apart, else nothing (the batch was never created)."""

    batch_id: str | None = None
    waiting: bool = False


class BatchAPI(Protocol):
    provider: str
    model: Model

    def item(self, custom_id: str, request: Request) -> tuple[dict[str, Any], str | None]: ...

    async def create(self, token: str, items: list[dict[str, Any]], on_file: Callable[[str], None]) -> str: ...

    async def find(self, job: Job, known: set[str]) -> Found: ...

    async def poll(self, batch_id: str) -> Poll: ...

    def results(self, job: Job, requests: dict[str, dict[str, Any]]) -> AsyncIterator[tuple[Outcome,
                                                                                           Completion | None]]: ...

    async def cancel(self, batch_id: str) -> None: ...

    def remembered(self) -> str | None: ...

    def restore(self, state: str | None) -> None: ...


class _Base:
    provider: str
    sdk: Any

    def __init__(self, model: Model, max_retries: int) -> None:
        self.model = model
        self.max_retries = max_retries
        self.where = model.base_url or model.default_base_url or model.provider

    async def _call(self, what: str, fn: Callable[[], Awaitable[T]]) -> T:
        """One batch-API call, retried on 429/5xx/timeouts (cai.retry), its SDK errors mapped to ProviderError."""
        async def attempt() -> T:
            try:
                return await fn()
            except (self.sdk.APIError, ValueError) as e:
                raise sdk_error(e, self.sdk, f"{self.where} ({what})", provider=self.provider,
                                model=self.model.name) from e

        result, _ = await with_retries(attempt, self.max_retries)
        return result

    def remembered(self) -> str | None:
        """What this model's endpoint was found to accept, to keep in the run (None: nothing to keep)."""
        return None

    def restore(self, state: str | None) -> None:
        """Take back what `remembered` returned in an earlier pass."""

    async def _create_once(self, what: str, fn: Callable[[], Awaitable[T]]) -> T:
        """A create, sent once (no retry: a lost reply is recovered by listing, never by sending again)."""
        try:
            return await fn()
        except (self.sdk.APIError, ValueError) as e:
            raise sdk_error(e, self.sdk, f"{self.where} ({what})", provider=self.provider,
                            model=self.model.name) from e


class OpenAIBatches(_Base):
    provider = "openai"
    sdk = openai

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
            why = f"batch {b.id} failed validation: {errors or 'no reason given'}"
            for cid in requests:
                yield Outcome(cid, "failed", None, why), None
            return
        for file_id in (b.output_file_id, b.error_file_id):
            if not file_id:
                continue
            content = await self._call("files.content", lambda f=file_id: client.files.content(f))
            for raw in content.text.splitlines():
                if raw.strip():
                    yield self._line(json.loads(raw), requests)

    def _line(self, line: dict[str, Any], requests: dict[str, dict[str, Any]]) -> tuple[Outcome, Completion | None]:
        cid = str(line.get("custom_id"))
        resp, error = line.get("response") or {}, line.get("error") or {}
        code = error.get("code") if isinstance(error, dict) else None
        if code in ("batch_expired", "batch_cancelled"):
            return Outcome(cid, "expired" if code == "batch_expired" else "canceled"), None
        status, body = resp.get("status_code"), resp.get("body")
        mode = (requests.get(cid) or {}).get("mode")
        if status == 200 and isinstance(body, dict):
            try:
                comp = self.m.completion(ChatCompletion.model_validate(body), mode, True, self.where)
            except (ProviderError, ValueError) as e:
                return Outcome(cid, "failed", 500, f"unreadable answer: {e}"), None
            return Outcome(cid, "done"), comp.model_copy(update={"batch": True})
        message = _openai_message(body) or (error.get("message") if isinstance(error, dict) else None) or "failed"
        if mode not in (None, "prompt") and status in (400, 422, 500) and mentions_format(message):
            self.m.refused_mode(mode)
            return Outcome(cid, "refused_mode", status, message), None
        return Outcome(cid, "failed", status if isinstance(status, int) else None, message), None

    async def cancel(self, batch_id: str) -> None:
        await self._call("batches.cancel", lambda: self.m.client().batches.cancel(batch_id))


def _openai_message(body: Any) -> str | None:
    if isinstance(body, dict):
        err = body.get("error", body)
        return str(err.get("message") or err) if isinstance(err, dict) else str(err)
    return None


class AnthropicBatches(_Base):
    provider = "anthropic"
    sdk = anthropic

    def __init__(self, model: Model, max_retries: int) -> None:
        assert isinstance(model, AnthropicModel)
        super().__init__(model, max_retries)
        self.m = model

    def item(self, custom_id: str, request: Request) -> tuple[dict[str, Any], str | None]:
        return {"custom_id": custom_id, "params": self.m.params(request)}, ("tool" if request.schema else None)

    async def create(self, token: str, items: list[dict[str, Any]], on_file: Callable[[str], None]) -> str:
        client = self.m.client()
        b = await self._create_once("messages.batches.create",
                                    lambda: client.messages.batches.create(requests=items))  # type: ignore[arg-type]
        return b.id

    async def find(self, job: Job, known: set[str]) -> Found:
        client, seen, waiting = self.m.client(), 0, False
        page = await self._call("messages.batches.list", lambda: client.messages.batches.list(limit=100))
        while True:
            for b in page.data:
                seen += 1
                rc = b.request_counts
                total = rc.processing + rc.succeeded + rc.errored + rc.canceled + rc.expired
                if b.id in known or total != job.requests:
                    continue
                if b.processing_status != "ended":
                    waiting = True  # maybe ours: its results will tell once it ends
                elif await self._holds(b.id, job.token):
                    return Found(b.id)
            if seen >= LIST_LIMIT or not page.has_next_page():
                return Found(None, waiting)
            page = await self._call("messages.batches.list", page.get_next_page)

    async def _holds(self, batch_id: str, token: str) -> bool:
        decoder = await self._call("messages.batches.results",
                                   lambda: self.m.client().messages.batches.results(batch_id))
        async for r in decoder:
            return r.custom_id.startswith(f"{token}-")
        return False

    async def poll(self, batch_id: str) -> Poll:
        b = await self._call("messages.batches.retrieve", lambda: self.m.client().messages.batches.retrieve(batch_id))
        rc = b.request_counts
        counts = {"processing": rc.processing, "succeeded": rc.succeeded, "errored": rc.errored,
                  "canceled": rc.canceled, "expired": rc.expired}
        return Poll(b.processing_status == "ended", b.processing_status, counts)

    async def results(self, job: Job, requests: dict[str, dict[str, Any]]
                      ) -> AsyncIterator[tuple[Outcome, Completion | None]]:
        decoder = await self._call("messages.batches.results",
                                   lambda: self.m.client().messages.batches.results(job.batch_id or ""))
        async for r in decoder:
            res = r.result
            if res.type == "succeeded":
                yield Outcome(r.custom_id, "done"), completion(res.message).model_copy(update={"batch": True})
            elif res.type == "errored":
                err = getattr(res.error, "error", None)
                kind = getattr(err, "type", "api_error")
                yield Outcome(r.custom_id, "failed", ANTHROPIC_STATUS.get(kind, 500),
                              getattr(err, "message", None) or kind), None
            else:  # canceled | expired
                yield Outcome(r.custom_id, "canceled" if res.type == "canceled" else "expired"), None

    async def cancel(self, batch_id: str) -> None:
        await self._call("messages.batches.cancel", lambda: self.m.client().messages.batches.cancel(batch_id))


APIS: dict[str, type[_Base]] = {"openai": OpenAIBatches, "anthropic": AnthropicBatches}


def batch_api(model: Model, max_retries: int) -> BatchAPI:
    """The batch adapter for `model`; InputError for a model whose provider has no batch API (local)."""
    cls = APIS.get(model.provider)
    if cls is None:
        raise InputError(f"a batch job needs openai: or anthropic: models; {model.spec} has no batch API "
                         "(use cai run for it)")
    return cls(model, max_retries)  # type: ignore[return-value]
