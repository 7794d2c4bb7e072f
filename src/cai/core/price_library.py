"""Prices of `openai:` and `anthropic:` models from the `genai-prices` library (github.com/pydantic/genai-prices),
whose price data ships inside the package: no network.

`library_price` turns the library's price of a model into a price table entry (`cai.core.prices`). The batch
prices are the library's where it has them (its `processing: batch` price variant); where it has none, the
providers' batch discount: half the standard input and output price (the OpenAI Batch API and Anthropic's
Message Batches API both charge 50 %), with cached and cache-write tokens at their standard price (an upper
bound). A price with tiers (a higher price for prompts above 200k or 272k tokens) gives its base tier.
The library dates its OpenAI and Anthropic price changes by UTC day, so a model's entry is looked up once a day.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time
from functools import lru_cache
from typing import Any

PROVIDERS = ("openai", "anthropic")  # the providers whose models the library prices for cai
BATCH = {"processing": "batch"}  # the library's price context of a batch API call
BATCH_DISCOUNT = 0.5  # what the providers' batch APIs charge of the standard input and output price

# library price key → price table field, standard and batch
_FIELDS = {"input_mtok": ("input", "batch_input"), "output_mtok": ("output", "batch_output"),
           "cache_read_mtok": ("cached_input", "batch_cached_input"),
           "cache_write_mtok": ("cache_write", "batch_cache_write")}


def _rate(price: Any) -> float | None:
    """USD per million tokens of a library price: a Decimal, or the base tier of a tiered price."""
    if price is None:
        return None
    return float(getattr(price, "base", price))


def _batch_keys(model: Any, when: datetime) -> set[str]:
    """The library price keys that the model's batch price variant (active at `when`) sets."""
    keys: set[str] = set()
    for variant in model.price_variants or ():
        if variant.when == BATCH and (variant.constraint is None or variant.constraint.active(when)):
            keys |= {k for k, v in vars(variant.prices).items() if v is not None}
    return keys


def library_price(spec: str, when: datetime | None = None) -> dict[str, float] | None:
    """The price table entry of `openai:<model>` / `anthropic:<model>` on the UTC day of `when` (today by
    default), or None when the provider is another one or the library does not know the model or has no token
    price for it."""
    provider, _, name = spec.partition(":")
    if provider not in PROVIDERS or not name:
        return None
    when = when or datetime.now(UTC)
    entry = _entry(provider, name, when.replace(tzinfo=when.tzinfo or UTC).astimezone(UTC).date())  # naive: UTC
    return None if entry is None else dict(entry)


@lru_cache(maxsize=256)
def _entry(provider: str, name: str, day: date) -> dict[str, float] | None:
    from genai_prices import Usage, calc_price  # its price data is a large module: loaded when first needed

    when = datetime.combine(day, time(12), UTC)
    try:
        standard = calc_price(Usage(), name, provider_id=provider, genai_request_timestamp=when)
        batch = calc_price(Usage(), name, provider_id=provider, genai_request_timestamp=when, price_context=BATCH)
    except LookupError:
        return None
    in_batch = _batch_keys(standard.model, when)
    entry: dict[str, float] = {}
    for key, (field, batch_field) in _FIELDS.items():
        rate = _rate(getattr(standard.model_price, key))
        if rate is not None:
            entry[field] = rate
        if key in in_batch and (rate := _rate(getattr(batch.model_price, key))) is not None:
            entry[batch_field] = rate
    if "input" not in entry or "output" not in entry:
        return None
    entry.setdefault("batch_input", entry["input"] * BATCH_DISCOUNT)
    entry.setdefault("batch_output", entry["output"] * BATCH_DISCOUNT)
    return entry
