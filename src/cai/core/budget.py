"""The budget (`--max-cost`): a call is sent only if its worst case fits in what the run has left.

What the run has spent is priced from its stored calls over every invocation (`spent_by_store`), plus the calls a
killed invocation had sent but never stored (their worst case, counted for good: `Store.settle_lost_holds`).
Before a call is sent, `Budget.reserve` sets aside its worst case: an upper bound on its prompt tokens
(`worst_tokens_in`) and `max_tokens` of output, at the price the call will be charged (the batch price for a
batch call; the dearer of the input and cache-write prices, since either may apply). A call that would take the
spent and reserved total past the limit waits while other calls are in flight (they settle at their real cost,
usually far below their worst case, and free the rest); with none in flight it is not sent: `BudgetExhausted`, and
from then on no call of the invocation is (`closed`), so the run stops as an interrupt does. A call that fails
without an answer releases its reservation. The event loop runs one coroutine at a time and `reserve` checks and
takes the money without awaiting in between, so no two calls can take the same money, whatever the concurrency.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from cai.calls import Completion, Request
from cai.core.prices import Prices, call_price, cost
from cai.errors import BudgetExhausted, InputError

if TYPE_CHECKING:
    from cai.store import Store

# Upper bounds on what a provider adds to the text it counts: per message (role markers, separators) and per
# request (reply priming, the wrapper of a JSON schema). Generous: the bound must hold for every tokenizer.
PER_MESSAGE = 16
PER_REQUEST = 64


def worst_tokens_in(request: Request) -> int:
    """An upper bound on the prompt tokens a provider counts for `request`: a token of a byte-level tokenizer
    covers at least one byte, so the UTF-8 bytes of every text sent (messages and the reply's JSON schema), plus
    `PER_MESSAGE` per message and `PER_REQUEST`."""
    text = sum(len(str(m.get("content") or "").encode("utf-8")) + len(str(m.get("role") or ""))
               for m in request.messages)
    schema = len(json.dumps(request.schema).encode("utf-8")) if request.schema else 0
    return text + schema + PER_MESSAGE * len(request.messages) + PER_REQUEST


def worst_rates(rates: Mapping[str, float]) -> dict[str, float]:
    """`rates` (`cai.core.prices.call_rates`) with every prompt token at the dearest prompt price."""
    top = max(rates["input"], rates["cache_write"], rates["cached_input"])
    return {**rates, "input": top, "cached_input": top, "cache_write": top}


def worst_case(request: Request, rates: Mapping[str, float]) -> float:
    """USD a call of `request` can cost at most, at `rates`."""
    return cost({"tokens_in": worst_tokens_in(request), "tokens_out": request.config.max_tokens},
                worst_rates(rates))


def run_cost(store: Store, prices: Prices, specs: Mapping[str, str] | None = None) -> float | None:
    """USD for every call the run paid for (the shared call cache's answers are free), each role's calls at its
    model's price (the run's `models` meta; `specs` for roles it lacks, e.g. a judge added by `cai label`), batch
    calls at the batch price; None if a model has no price."""
    models, total = {**(specs or {}), **store.get_meta("models", {})}, 0.0
    for batch in (False, True):
        for role, t in store.token_totals(batch=batch).items():
            rates = call_price(models.get(role, ""), prices, batch)
            if rates is None:
                return None
            total += cost(t, rates)
    return total


def role_rates(models: Mapping[str, str], prices: Prices, batch: bool = False) -> dict[str, dict[str, float]]:
    """Each role's `call_rates` (its model spec's price, at the batch price with `batch`); InputError naming the
    model when one has no price (a budget cannot be kept without it)."""
    out = {}
    for role, spec in models.items():
        rates = call_price(spec, prices, batch)
        if rates is None:
            raise InputError(f"no price for {role} model {spec!r}: --max-cost needs one (give it in a --prices "
                             "table, see docs/cost.md)")
        out[role] = rates
    return out


@dataclass
class Budget:
    """A run's budget for one invocation: `limit` USD, `spent` before it (stored calls and lost holds), the
    reservations of calls in flight, and the rates of each role's model."""

    limit: float
    spent: float
    rates: dict[str, dict[str, float]]
    reserved: float = 0.0
    in_flight: int = 0  # calls holding a reservation
    closed: bool = False
    settled: float = 0.0  # the real cost of the calls this invocation answered
    _changed: asyncio.Event = field(default_factory=asyncio.Event, repr=False)  # set when money is freed

    def worst(self, role: str, request: Request) -> float:
        return worst_case(request, self.rates[role])

    async def reserve(self, role: str, request: Request) -> float:
        """Set aside the worst case of a call of `role` and return it (see `take`)."""
        return await self.take(self.worst(role, request))

    async def take(self, usd: float) -> float:
        """Set aside `usd` and return it. While it does not fit but other calls are in flight, wait for them to
        settle (their real cost is usually far below their worst case); once it does not fit with nothing in
        flight, the budget closes: BudgetExhausted, now and for every later call."""
        while not self.closed and self.spent + self.settled + self.reserved + usd > self.limit:
            if not self.in_flight:
                self.closed = True
                break
            await self._changed.wait()
        if self.closed:
            self._wake()
            raise exhausted(self.total, self.limit)
        self.reserved += usd
        self.in_flight += 1
        return usd

    def settle(self, role: str, reserved: float, comp: Completion) -> None:
        """The call answered: its reservation becomes its real cost."""
        self.pay(reserved, cost(comp.model_dump(), self.rates[role]))

    def pay(self, reserved: float, usd: float) -> None:
        """A reservation of `reserved` becomes a cost of `usd`."""
        self.settled += usd
        self.release(reserved)

    def release(self, reserved: float) -> None:
        """The call ended without an answer: nothing was charged."""
        self.in_flight -= 1
        self.reserved = max(self.reserved - reserved, 0.0) if self.in_flight else 0.0  # no float residue
        self._wake()

    def _wake(self) -> None:
        """Let the calls waiting in `reserve` look again."""
        self._changed.set()
        self._changed = asyncio.Event()

    @property
    def total(self) -> float:
        """USD spent over the run, this invocation's answered calls included."""
        return self.spent + self.settled


def exhausted(spent: float, limit: float) -> BudgetExhausted:
    """The error of a call that does not fit in the budget, nothing else being in flight."""
    return BudgetExhausted(f"budget reached: ${spent:.4f} spent of ${limit:.4f} (--max-cost); the next call could "
                           "cost more than what is left", spent=spent, limit=limit)
