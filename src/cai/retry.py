"""Retries live here and nowhere else: tenacity, exponential backoff with jitter, Retry-After honoured."""

from __future__ import annotations

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt
from tenacity.wait import wait_random_exponential

from cai.errors import ProviderError, RateLimited

MAX_RETRY_AFTER = 120.0


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
