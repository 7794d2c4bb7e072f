"""Politeness to rate limits: --rpm/--tpm pacing and an AIMD cap on calls in flight."""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from cai.calls import Request
from cai.errors import InputError


def estimate_tokens(request: Request) -> int:
    """The (rough) tokens a request counts against --tpm: its characters / 4, plus the reply's max_tokens."""
    return sum(len(m["content"]) for m in request.messages) // 4 + request.config.max_tokens


class Pacer:
    """Starts at most `rpm` requests and `tpm` (estimated) tokens in any 60-second window.

    Requests are also spaced by 60/rpm seconds, so the traffic is smooth rather than bursty.
    """

    WINDOW = 60.0

    def __init__(self, rpm: int | None = None, tpm: int | None = None) -> None:
        self.rpm, self.tpm = rpm, tpm
        self._lock = asyncio.Lock()
        self._next = 0.0
        self._log: collections.deque[tuple[float, int]] = collections.deque()

    async def wait(self, tokens: int = 0) -> None:
        """Return when a request of `tokens` (estimated) may start; record it in the window.

        A request larger than `tpm` could never be admitted: InputError (the run stops, exit 2)."""
        if not self.rpm and not self.tpm:
            return
        if self.tpm and tokens > self.tpm:
            raise InputError(f"--tpm {self.tpm} is smaller than one request (~{tokens} tokens); raise --tpm")
        async with self._lock:
            while True:
                now = time.monotonic()
                while self._log and self._log[0][0] <= now - self.WINDOW:
                    self._log.popleft()
                delay = 0.0
                if self.rpm:
                    delay = max(delay, self._next - now)
                    if len(self._log) >= self.rpm:
                        delay = max(delay, self._log[0][0] + self.WINDOW - now)
                if self.tpm and self._log:
                    used = sum(n for _, n in self._log)
                    if used + tokens > self.tpm:
                        delay = max(delay, self._log[0][0] + self.WINDOW - now)
                if delay <= 0:
                    break
                await asyncio.sleep(delay)
            self._log.append((now, tokens))
            if self.rpm:
                self._next = now + self.WINDOW / self.rpm


class AIMDLimiter:
    """Caps calls in flight; halves the cap on a 429 (once per `cooldown` s), adds 1/cap per success."""

    def __init__(self, maximum: int, cooldown: float = 1.0) -> None:
        self.maximum = max(1, maximum)
        self.limit = float(self.maximum)
        self.low = self.limit  # the lowest the cap went, for the summary
        self.in_flight = 0
        self.cooldown = cooldown
        self._last_cut = -1e9
        self._cond = asyncio.Condition()
        self._waiting = 0  # tasks waiting for a slot

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        if self.in_flight >= int(self.limit) or self._waiting:  # the lock only when someone must wait
            self._waiting += 1
            try:
                async with self._cond:
                    await self._cond.wait_for(lambda: self.in_flight < int(self.limit))
                    self.in_flight += 1
            finally:
                self._waiting -= 1
        else:
            self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1
            if self._waiting:
                async with self._cond:
                    self._cond.notify_all()

    def on_success(self) -> None:
        if self.limit < self.maximum:
            self.limit = min(self.maximum, self.limit + 1.0 / self.limit)

    def on_rate_limited(self) -> None:
        now = time.monotonic()
        if now - self._last_cut >= self.cooldown:
            self.limit = max(1.0, self.limit / 2)
            self.low = min(self.low, self.limit)
            self._last_cut = now
