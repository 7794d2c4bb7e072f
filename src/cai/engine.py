"""Model calls as the pipeline makes them: cache lookup, pacing, AIMD cap, retries, accounting."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from cai.config import Completion, Request, cache_key
from cai.errors import RateLimited
from cai.pacing import AIMDLimiter, Pacer
from cai.providers.base import Model
from cai.retry import with_retries
from cai.store import Store


@dataclass
class RoleStats:
    calls: int = 0
    cached: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    retries: int = 0


@dataclass
class Stats:
    """Counters for progress and the summary (this invocation only; the store keeps the totals)."""

    roles: dict[str, RoleStats] = field(default_factory=dict)

    def role(self, name: str) -> RoleStats:
        return self.roles.setdefault(name, RoleStats())

    @property
    def calls(self) -> int:
        return sum(r.calls for r in self.roles.values())

    @property
    def tokens_in(self) -> int:
        return sum(r.tokens_in for r in self.roles.values())

    @property
    def tokens_out(self) -> int:
        return sum(r.tokens_out for r in self.roles.values())


class Engine:
    """Sends requests for roles (generator, critic, reviser, grader…) to their models."""

    def __init__(self, store: Store, models: dict[str, Model], *, max_retries: int = 5,
                 concurrency: int = 8, rpm: int | None = None, tpm: int | None = None) -> None:
        self.store = store
        self.models = models
        self.max_retries = max_retries
        self.stats = Stats()
        # One pacer and one AIMD cap per endpoint, shared by the roles that use it.
        self._pacers: dict[str, Pacer] = {}
        self._limiters: dict[str, AIMDLimiter] = {}
        for m in models.values():
            ep = self._endpoint(m)
            self._pacers.setdefault(ep, Pacer(rpm, tpm))
            self._limiters.setdefault(ep, AIMDLimiter(concurrency))

    @staticmethod
    def _endpoint(model: Model) -> str:
        return f"{model.provider}|{model.base_url}"

    def concurrency_report(self) -> dict[str, dict[str, float]]:
        """Per endpoint: the AIMD cap's maximum, lowest point and value at the end."""
        return {ep: {"max": lim.maximum, "low": lim.low, "end": round(lim.limit, 2)}
                for ep, lim in self._limiters.items()}

    async def call(self, role: str, request: Request) -> Completion:
        model = self.models[role]
        key = cache_key(model.identity(), request)
        stats = self.stats.role(role)
        hit = self.store.get_call(key)
        if hit is not None:
            stats.cached += 1
            return hit
        ep = self._endpoint(model)
        pacer, limiter = self._pacers[ep], self._limiters[ep]
        estimate = 0
        if pacer.tpm:  # only --tpm pacing needs the (rough) token estimate
            estimate = sum(len(m["content"]) for m in request.messages) // 4 + request.config.max_tokens

        async def attempt() -> Completion:
            async with limiter.slot():
                await pacer.wait(estimate)
                try:
                    comp = await model.complete(request)
                except RateLimited:
                    limiter.on_rate_limited()
                    raise
            limiter.on_success()
            return comp

        comp, attempts = await with_retries(attempt, self.max_retries)
        stats.calls += 1
        stats.retries += attempts - 1
        stats.tokens_in += comp.tokens_in
        stats.tokens_out += comp.tokens_out
        self.store.add_call(key, role, model.spec, comp)  # durable with the step that uses it
        return comp

    async def aclose(self) -> None:
        await asyncio.gather(*(m.aclose() for m in {id(m): m for m in self.models.values()}.values()))
