"""The budget (`--max-cost`) across Ray workers: one budget actor holds the run's money, and every worker's engine
asks it before each call.

Why an actor and not leases granted by the driver: a lease is money set aside for a worker before it knows what
its calls will cost, so a run with a tight budget would stop while other workers sat on unspent leases, and
`reserve` would no longer wait for the calls in flight of *all* workers to settle. One actor keeps the local
engine's rule exactly (`cai.core.budget.Budget`: a call is sent only if its worst case fits in what no call has
set aside, across every worker) at the price of one round trip to the actor per call. A worker that dies leaves
its reservations with the actor; the driver then `forfeit`s them: they count as spent (the calls may have been
paid) and stop blocking the others.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from cai.calls import Completion, Request
from cai.core.budget import Budget, exhausted, worst_case
from cai.core.prices import cost
from cai.errors import BudgetExhausted


class BudgetActor:
    """The run's `Budget` for one invocation, kept by one Ray actor (the driver wraps this class with `ray.remote`,
    async, so that waiting `take`s do not block `pay` and `release`). Reservations are kept per worker name."""

    def __init__(self, limit: float, spent: float) -> None:
        self.budget = Budget(limit, spent, {})
        self.held: dict[str, list[float]] = defaultdict(list)
        self.lost = 0.0

    async def take(self, worker: str, usd: float) -> bool:
        """Set aside `usd` for a call of `worker`; False once nothing more fits (the budget is closed)."""
        try:
            await self.budget.take(usd)
        except BudgetExhausted:
            return False
        self.held[worker].append(usd)
        return True

    def pay(self, worker: str, reserved: float, usd: float) -> None:
        self._drop(worker, reserved)
        self.budget.pay(reserved, usd)

    def release(self, worker: str, reserved: float) -> None:
        self._drop(worker, reserved)
        self.budget.release(reserved)

    def forfeit(self, worker: str) -> float:
        """A dead worker's reservations, counted as spent (their calls may have been paid); the USD so counted."""
        held = self.held.pop(worker, [])
        for usd in held:
            self.budget.pay(usd, usd)
        self.lost += sum(held)
        return sum(held)

    def state(self) -> dict[str, Any]:
        """closed, spent (over the run), lost (forfeited) and reserved, in USD."""
        b = self.budget
        return {"closed": b.closed, "spent": b.total, "lost": self.lost, "reserved": b.reserved}

    def _drop(self, worker: str, usd: float) -> None:
        held = self.held.get(worker)
        if held and usd in held:
            held.remove(usd)


class RemoteBudget:
    """A worker engine's `BudgetKeeper`: worst cases and real costs priced here (`rates` by role), money kept by
    the run's `BudgetActor` (`handle`) under this worker's `name`."""

    def __init__(self, handle: Any, name: str, rates: dict[str, dict[str, float]], limit: float) -> None:
        self.handle, self.name, self.rates, self.limit = handle, name, rates, limit

    async def reserve(self, role: str, request: Request) -> float:
        usd = worst_case(request, self.rates[role])
        if not await self.handle.take.remote(self.name, usd):
            raise exhausted((await self.handle.state.remote())["spent"], self.limit)
        return usd

    def settle(self, role: str, reserved: float, comp: Completion) -> None:
        self.handle.pay.remote(self.name, reserved, cost(comp.model_dump(), self.rates[role]))

    def release(self, reserved: float) -> None:
        self.handle.release.remote(self.name, reserved)
