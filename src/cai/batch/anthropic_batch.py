"""Anthropic's Message Batches API for batch jobs, through the anthropic SDK."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import anthropic

from cai.batch.apis import LIST_LIMIT, BatchBase, Found, Poll
from cai.batch.ledger import Job, Outcome
from cai.calls import Completion, Request
from cai.providers.anthropic_api import AnthropicModel, completion
from cai.providers.base import Model

# Anthropic error types inside `errored` results → the HTTP status the synchronous API answers with (any
# other type: 500). The status decides retry or not as for a synchronous call.
ANTHROPIC_STATUS = {"invalid_request_error": 400, "authentication_error": 401, "billing_error": 402,
                    "permission_error": 403, "not_found_error": 404, "request_too_large": 413,
                    "rate_limit_error": 429, "api_error": 500, "timeout_error": 504, "overloaded_error": 529}
RESENT = ("canceled", "expired")  # result types of requests never run: sent again as they were


class Batches(BatchBase):
    provider = "anthropic"
    sdk = anthropic
    max_requests = 100_000  # Anthropic's limits for one message batch: requests, and its size (256 MB)
    max_bytes = 240_000_000

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
            elif res.type in RESENT:
                yield Outcome(r.custom_id, res.type), None
            else:
                yield _errored(r.custom_id, res), None

    async def cancel(self, batch_id: str) -> None:
        await self._call("messages.batches.cancel", lambda: self.m.client().messages.batches.cancel(batch_id))


def _errored(custom_id: str, res: Any) -> Outcome:
    """An `errored` result (or one of a type this module does not know: like a 500) as a failed request."""
    err = getattr(getattr(res, "error", None), "error", None)
    kind = getattr(err, "type", None) or ("api_error" if res.type == "errored" else f"result type {res.type}")
    return Outcome(custom_id, "failed", ANTHROPIC_STATUS.get(kind, 500),
                   f"{kind}: {getattr(err, 'message', None) or 'no message'}")
