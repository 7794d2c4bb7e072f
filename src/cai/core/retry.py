"""Retries live here and nowhere else: tenacity, exponential backoff with jitter, Retry-After honoured."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt
from tenacity.wait import wait_random_exponential

from cai.errors import ProviderError, RateLimited

MAX_RETRY_AFTER = 120.0
T = TypeVar("T")


def _retryable(e: BaseException) -> bool:
    return isinstance(e, ProviderError) and e.retryable


class _Wait:
    """Server's Retry-After when given (capped), else exponential backoff with full jitter."""

    def __init__(self, initial: float, maximum: float) -> None:
        self._backoff = wait_random_exponential(multiplier=initial, max=maximum)

    def __call__(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, RateLimited) and exc.retry_after is not None:
            return min(max(exc.retry_after, 0.0), MAX_RETRY_AFTER)
        return self._backoff(state)


def retrying(max_retries: int, initial: float = 0.5, maximum: float = 30.0) -> AsyncRetrying:
    """`async for attempt in retrying(n): with attempt: ...` — up to n retries after the first try."""
    return AsyncRetrying(retry=retry_if_exception(_retryable), stop=stop_after_attempt(max_retries + 1),
                         wait=_Wait(initial, maximum), reraise=True)


async def with_retries(fn: Callable[[], Awaitable[T]], max_retries: int) -> T:
    """`await fn()`, retrying as `retrying(max_retries)` does.

    The first try runs outside tenacity (most calls succeed at once, and its machinery costs more
    CPU than the rest of a call's bookkeeping); a retryable failure is then replayed as tenacity's
    first attempt, so the waits, Retry-After and the number of tries are exactly those of `retrying`.
    """
    try:
        return await fn()
    except ProviderError as e:
        if max_retries <= 0 or not _retryable(e):
            raise
        first: BaseException | None = e
    async for attempt in retrying(max_retries):
        with attempt:
            if first is not None:
                replay, first = first, None
                raise replay
            result = await fn()
    return result
