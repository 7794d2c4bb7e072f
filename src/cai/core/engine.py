"""Model calls as the pipeline makes them: cache lookup, pacing, AIMD cap, retries, accounting."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from cai.calls import Completion, Request, cache_key
from cai.core.pacing import AIMDLimiter, Pacer, estimate_tokens
from cai.core.retry import with_retries
from cai.errors import ConnectFailed, EndpointDown, NotFound, RateLimited
from cai.providers.base import Model
from cai.store.callcache import CallCache
from cai.store.sink import RecordSink


@dataclass
class RoleStats:
    calls: int = 0
    cached: int = 0  # answers the run's own store already had (a resumed run)
    shared: int = 0  # answers taken from the shared call cache
    tokens_in: int = 0
    tokens_out: int = 0
    tokens_cached: int = 0  # parts of tokens_in read from / written to the provider's prompt cache
    tokens_cache_write: int = 0
    retries: int = 0  # requests sent after a call's first, whether the call then succeeded or failed
    rate_limited: int = 0  # 429 answers, retried or not


@dataclass
class Stats:
    """Counters for progress and the summary (this invocation only; the store keeps the totals)."""

    roles: dict[str, RoleStats] = field(default_factory=dict)
    unparsed: int = 0  # critic replies that were not a valid verdict even after the repair request

    def role(self, name: str) -> RoleStats:
        return self.roles.setdefault(name, RoleStats())

    def total(self, counter: str) -> int:
        """One `RoleStats` counter summed over the roles, e.g. total("shared")."""
        return sum(getattr(r, counter) for r in self.roles.values())

    @property
    def calls(self) -> int:
        return self.total("calls")

    @property
    def tokens_in(self) -> int:
        return self.total("tokens_in")

    @property
    def tokens_out(self) -> int:
        return self.total("tokens_out")

    @property
    def retries(self) -> int:
        return self.total("retries")

    @property
    def rate_limited(self) -> int:
        return self.total("rate_limited")


class Deferred(Exception):  # noqa: N818 - a signal, not a failure
    """The call is not answered now: it waits for a later answer (a provider batch). The record waits with it."""


class BudgetKeeper(Protocol):
    """What the engine asks of a budget (`cai.core.budget.Budget`, or a Ray worker's handle on the run's): reserve
    a call's worst case before it is sent (BudgetExhausted if it does not fit), then settle or release it."""

    async def reserve(self, role: str, request: Request) -> float: ...
    def settle(self, role: str, reserved: float, comp: Completion) -> None: ...
    def release(self, reserved: float) -> None: ...


class Deferral(Protocol):
    """Takes the calls an engine does not send itself (a batch plugin's collector). `defer` returns once the call
    is queued or already on its way (the engine then raises Deferred), or raises the ProviderError that ends it.
    `step` is the pipeline's (stage, round) for the call, when it says."""

    def defer(self, role: str, model: Model, key: str, request: Request, record: str | None,
              step: tuple[str, int] | None) -> None: ...


@dataclass
class EndpointHealth:
    """Whether an endpoint has ever answered, and how many calls in a row could not connect to it."""

    answered: int = 0
    unreachable_in_a_row: int = 0


def _observed(fut: asyncio.Future[Completion]) -> None:
    """Mark a call's outcome as seen: nobody else may have waited for it."""
    if not fut.cancelled():
        fut.exception()


class Engine:
    """Sends requests for roles (generator, critic, reviser, grader…) to their models.

    An endpoint that never answered and refuses connections (after the retries), or that answers 404
    (wrong model or base URL), raises EndpointDown, which stops the run instead of failing every
    record one by one; so do `UNREACHABLE_IN_A_ROW` calls in a row that could not connect.
    """

    UNREACHABLE_IN_A_ROW = 3

    def __init__(self, store: RecordSink, models: dict[str, Model], *, max_retries: int = 5,
                 concurrency: int = 8, rpm: int | None = None, tpm: int | None = None,
                 cache: CallCache | None = None, deferral: Deferral | None = None,
                 budget: BudgetKeeper | None = None) -> None:
        self.store = store
        self.models = models
        self.cache = cache
        self.deferral = deferral
        self.budget = budget  # --max-cost: every call sent reserves its worst case first (cai.core.budget)
        self.max_retries = max_retries
        self.stats = Stats()
        # One pacer and one AIMD cap per endpoint, shared by the roles that use it.
        self._pacers: dict[str, Pacer] = {}
        self._limiters: dict[str, AIMDLimiter] = {}
        self._health: dict[str, EndpointHealth] = {}
        self._sending: dict[str, asyncio.Future[Completion]] = {}  # calls on their way, by key
        for m in models.values():
            ep = self._endpoint(m)
            self._pacers.setdefault(ep, Pacer(rpm, tpm))
            self._limiters.setdefault(ep, AIMDLimiter(concurrency))
            self._health.setdefault(ep, EndpointHealth())

    @staticmethod
    def _endpoint(model: Model) -> str:
        return f"{model.provider}|{model.identity_url()}"

    def concurrency_report(self) -> dict[str, dict[str, float]]:
        """Per endpoint: the AIMD cap's maximum, lowest point and value at the end."""
        return {ep: {"max": lim.maximum, "low": lim.low, "end": round(lim.limit, 2)}
                for ep, lim in self._limiters.items()}

    async def call(self, role: str, request: Request, record: str | None = None,
                   step: tuple[str, int] | None = None) -> Completion:
        """The model's reply to `request` (from the run's store if it has it, else from the shared call cache
        if there is one); `record` names the record the call is for, so its stored reply fails only that
        record if it cannot be written. With a `deferral`, a call neither has answered is handed to it and
        raises Deferred instead of being sent; `step` is the pipeline's (stage, round) it is for. A request already
        on its way (another record's identical call) is not sent again: that call's answer is this one's."""
        model = self.models[role]
        key = cache_key(model.identity(), request)
        stats = self.stats.role(role)
        hit = self.store.get_call(key)
        if hit is not None:
            stats.cached += 1
            return hit
        if self.cache is not None and (hit := self.cache.get(key)) is not None:
            stats.shared += 1
            self.store.add_call(key, role, model.spec, hit, record, shared=True)
            return hit
        if self.deferral is not None:
            self._may_send(record)
            self.deferral.defer(role, model, key, request, record, step)
            raise Deferred(key)
        while (sending := self._sending.get(key)) is not None:  # the same request is on its way: its answer is ours
            try:
                comp = await asyncio.shield(sending)
            except asyncio.CancelledError:
                if (task := asyncio.current_task()) is not None and task.cancelling():
                    raise
                continue  # that call was cancelled, not this one: send it ourselves
            except Exception:  # noqa: BLE001 - that call failed (e.g. its record's writes): this one tries itself
                continue
            stats.cached += 1
            return comp
        sending = self._sending[key] = asyncio.get_running_loop().create_future()
        sending.add_done_callback(_observed)
        try:
            comp = await self._send(role, model, key, request, record)
        except Exception as e:
            sending.set_exception(e)
            raise
        except BaseException:
            sending.cancel()
            raise
        else:
            sending.set_result(comp)
        finally:
            del self._sending[key]
        return comp

    async def _send(self, role: str, model: Model, key: str, request: Request, record: str | None) -> Completion:
        """Send `request` to `model` (paced, capped, retried, within the budget) and store its answer."""
        stats = self.stats.role(role)
        ep = self._endpoint(model)
        pacer, limiter = self._pacers[ep], self._limiters[ep]
        estimate = 0
        if pacer.tpm:  # only --tpm pacing needs the (rough) token estimate
            estimate = estimate_tokens(request)

        sent = 0  # requests sent for this call: every one after the first is a retry, whatever the outcome
        reserved = await self.budget.reserve(role, request) if self.budget is not None else 0.0

        async def attempt() -> Completion:
            nonlocal sent
            async with limiter.slot():
                await pacer.wait(estimate)
                self._may_send(record)
                if self.budget is not None and not sent:
                    await self.store.hold(key, reserved)  # durable before the request leaves
                sent += 1
                try:
                    comp = await model.complete(request)
                except RateLimited:
                    limiter.on_rate_limited()
                    stats.rate_limited += 1
                    raise
            limiter.on_success()
            return comp

        health = self._health[ep]
        try:
            comp = await self._budgeted(attempt, role, key, reserved)
        except (ConnectFailed, NotFound) as e:
            health.unreachable_in_a_row += isinstance(e, ConnectFailed)
            if not health.answered or health.unreachable_in_a_row >= self.UNREACHABLE_IN_A_ROW:
                hint = ("is the server running, and is --base-url right?" if isinstance(e, ConnectFailed)
                        else "check the model name and --base-url")
                raise EndpointDown(f"{model.spec} is unusable: {e} ({hint})", provider=e.provider or model.provider,
                                   model=e.model or model.name, status=e.status) from e
            raise
        finally:
            stats.retries += max(sent - 1, 0)
        health.answered += 1
        health.unreachable_in_a_row = 0
        stats.calls += 1
        stats.tokens_in += comp.tokens_in
        stats.tokens_out += comp.tokens_out
        stats.tokens_cached += comp.tokens_cached
        stats.tokens_cache_write += comp.tokens_cache_write
        self.store.add_call(key, role, model.spec, comp, record)  # durable with the step that uses it
        if self.cache is not None:
            await self.cache.aput(key, model.spec, comp)
        return comp

    async def _budgeted(self, attempt: Callable[[], Awaitable[Completion]], role: str, key: str,
                        reserved: float) -> Completion:
        """`attempt` with its retries; under a budget, the call's reservation settled with its real cost, or
        released (with its hold) when it ends without an answer. A cancelled call keeps its hold: it may have
        been paid, so the next invocation counts it."""
        if self.budget is None:
            return await with_retries(attempt, self.max_retries)
        try:
            comp = await with_retries(attempt, self.max_retries)
        except asyncio.CancelledError:
            self.budget.release(reserved)
            raise
        except BaseException:
            self.budget.release(reserved)
            self.store.release(key)
            raise
        self.budget.settle(role, reserved, comp)
        return comp

    def _may_send(self, record: str | None) -> None:
        """No call is sent once the store has failed, or for a record whose writes failed."""
        if self.store.broken is not None:
            raise self.store.broken
        if record is not None:
            self.store.check_record(record)

    async def aclose(self) -> None:
        await asyncio.gather(*(m.aclose() for m in {id(m): m for m in self.models.values()}.values()))
