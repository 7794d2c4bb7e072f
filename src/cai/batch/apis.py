"""The providers' batch APIs, through their own SDKs: OpenAI Files + Batches (`/v1/chat/completions` lines) and
Anthropic Message Batches. Each adapter builds a request's batch item from the same parameters the model
sends synchronously, creates a batch, finds one again after a lost reply, polls, reads results and cancels.

Neither API takes an idempotency key, so a create is sent once (the SDK's own retries are off) and a lost
reply is recovered by listing: OpenAI batches carry `metadata.cai_job`; Anthropic batches carry no metadata,
so a candidate (same request count, not already this run's) is adopted only once its results show this
job's token in their custom ids.
"""

from __future__ import annotations

import importlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from cai.batch.ledger import Job, Outcome
from cai.calls import Completion, Request
from cai.core.retry import with_retries
from cai.errors import InputError
from cai.providers.base import Model, sdk_error

T = TypeVar("T")
LIST_LIMIT = 500  # batches looked at when recovering a lost create (newest first)


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
    max_requests: int  # the most requests, and bytes of requests, one batch may hold
    max_bytes: int

    def item(self, custom_id: str, request: Request) -> tuple[dict[str, Any], str | None]: ...

    async def create(self, token: str, items: list[dict[str, Any]], on_file: Callable[[str], None]) -> str: ...

    async def find(self, job: Job, known: set[str]) -> Found: ...

    async def poll(self, batch_id: str) -> Poll: ...

    def results(self, job: Job, requests: dict[str, dict[str, Any]]) -> AsyncIterator[tuple[Outcome,
                                                                                           Completion | None]]: ...

    async def cancel(self, batch_id: str) -> None: ...

    async def forget(self, job: Job) -> None: ...

    def remembered(self) -> str | None: ...

    def restore(self, state: str | None) -> None: ...


class BatchBase:
    provider: str
    sdk: Any

    def __init__(self, model: Model, max_retries: int) -> None:
        self.model = model
        self.max_retries = max_retries
        self.where = model.where

    async def _call(self, what: str, fn: Callable[[], Awaitable[T]]) -> T:
        """One batch-API call, retried on 429/5xx/timeouts (cai.core.retry), its SDK errors mapped to ProviderError."""
        async def attempt() -> T:
            try:
                return await fn()
            except (self.sdk.APIError, ValueError) as e:
                raise sdk_error(e, self.sdk, f"{self.where} ({what})", provider=self.provider,
                                model=self.model.name) from e

        return await with_retries(attempt, self.max_retries)

    def remembered(self) -> str | None:
        """What this model's endpoint was found to accept, to keep in the run (None: nothing to keep)."""
        return None

    def restore(self, state: str | None) -> None:
        """Take back what `remembered` returned in an earlier pass."""

    async def forget(self, job: Job) -> None:
        """Clean up what the provider keeps of an ended batch whose results are stored (nothing by default)."""

    async def _create_once(self, what: str, fn: Callable[[], Awaitable[T]]) -> T:
        """A create, sent once (no retry: a lost reply is recovered by listing, never by sending again)."""
        try:
            return await fn()
        except (self.sdk.APIError, ValueError) as e:
            raise sdk_error(e, self.sdk, f"{self.where} ({what})", provider=self.provider,
                            model=self.model.name) from e


# provider → the module whose `Batches` class speaks its batch API (imported on first use: a job loads one SDK)
ADAPTERS = {"openai": "cai.batch.openai_batch", "anthropic": "cai.batch.anthropic_batch"}


def refuse_without_batch_api(specs: dict[str, str], given: set[str]) -> None:
    """InputError for the first role whose model spec (`local`, `openai:NAME`, …) names a provider without a batch
    API; `given`: the model options the caller gave (a role none of them set has the default model, local)."""
    for role, spec in specs.items():
        if spec.split(":", 1)[0] in ADAPTERS:
            continue
        if not given & {"model", role}:
            raise InputError(f"a batch job needs --model openai:NAME or anthropic:NAME: the default model, {spec} "
                             "(the embedded one), has no batch API (use cai run for it)")
        raise InputError(f"a batch job needs openai: or anthropic: models; {spec} (the {role}) has no batch API "
                         "(use cai run for it)")


def batch_api(model: Model, max_retries: int) -> BatchAPI:
    """The batch adapter for `model`; InputError for a model whose provider has no batch API (local)."""
    module = ADAPTERS.get(model.provider)
    if module is None:
        raise InputError(f"a batch job needs openai: or anthropic: models; {model.spec} has no batch API "
                         "(use cai run for it)")
    return importlib.import_module(module).Batches(model, max_retries)  # type: ignore[no-any-return]
