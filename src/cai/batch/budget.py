"""A batch job's budget (`--max-cost`): a stage submits only the requests whose worst case fits in what is left.

What is left is the budget less what the run has spent (its stored calls, each at the price it was charged, and
the worst case of calls a killed `cai run` left unsettled: `Store.settle_lost_holds`) less the worst case of
every request still with the provider. A request's worst case is `cai.core.budget.worst_case` at the batch price.
Each request goes into the store with a hold of its worst case (`budget_holds`, keyed by its call's cache key),
written with its batch's row before the batch is created; the hold goes when its answer is stored
(`Store.add_call`), when its batch ends without one, or when its batch turns out never to have been created. So
every tick, and `cai batch status`, sees what is in flight. Holds are written whenever every model has a price,
with or without a budget, so that a budget a later tick sets counts the requests already out.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass

from pydantic import ValidationError

from cai.calls import Request
from cai.core.budget import role_rates, run_cost, worst_case
from cai.core.prices import Prices, load_prices
from cai.errors import InputError
from cai.settings import ExecutionSettings, RunSettings
from cai.store import Store


@dataclass
class JobBudget:
    """The limit (None: no budget), the price table and each role's batch rates (None: a model has no price, so
    nothing is held, which only a job without a budget allows)."""

    limit: float | None
    prices: Prices | None = None
    rates: dict[str, dict[str, float]] | None = None

    @classmethod
    def of(cls, execution: ExecutionSettings, specs: Mapping[str, str]) -> JobBudget:
        """The budget of a job whose roles use the models `specs` (role → PROVIDER:MODEL); InputError naming a
        model without a price when `execution` sets a budget."""
        try:
            prices = load_prices(execution.prices)
            rates = role_rates(specs, prices, batch=True)
        except InputError:
            if execution.max_cost is not None:
                raise
            return cls(None)
        return cls(execution.max_cost, prices, rates)

    def worst(self, role: str, request: Request) -> float | None:
        """USD a batch request of `role` can cost at most; None without prices."""
        return None if self.rates is None else worst_case(request, self.rates[role])

    def left(self, store: Store, in_flight: Collection[str]) -> float:
        """USD new requests may take now (infinite without a limit); the holds of keys not `in_flight` are
        counted as spent (`Store.settle_lost_holds`)."""
        if self.limit is None or self.prices is None:
            return math.inf
        lost = store.settle_lost_holds(keep=in_flight)
        return self.limit - (run_cost(store, self.prices) or 0.0) - lost - store.held_usd()


def with_max_cost(settings: RunSettings, max_cost: float) -> RunSettings:
    """`settings` with the budget `max_cost`, checked against the field's bounds (InputError otherwise)."""
    try:
        execution = ExecutionSettings.model_validate({**settings.execution.model_dump(), "max_cost": max_cost})
    except ValidationError as e:
        raise InputError(f"run option max_cost (--max-cost): {e.errors()[0]['msg']}") from None
    return settings.model_copy(update={"execution": execution})

