"""The price of each model for the cost estimate: a `--prices FILE` first, then the `genai-prices` library.

A price table is a JSON object mapping fnmatch patterns over model specs (`openai:gpt-4o*`) to prices in USD
per million tokens: `{"input", "output"}` (required) and, optionally, `batch_input` / `batch_output` (calls
made through the provider's batch API), `cached_input` (prompt tokens read from the provider's prompt cache),
`cache_write` (prompt tokens written to it: Anthropic charges more than `input` for them) and
`batch_cached_input` / `batch_cache_write` (the same in a batch call). Keys starting with `_` are comments.
The first matching pattern wins. Every problem is an InputError naming the file and the line or field;
`cai.limits` bounds the file's size, nesting and integers.

`price_of` looks a model up in the table, then prices `local` models at 0 (the embedded model runs on this
machine), then asks `cai.core.price_library` (OpenAI and Anthropic models). `call_rates` gives the prices a
call is actually charged at and `cost` prices token counts with them. A price an entry lacks falls back to
one it has (documented in `call_rates`), never to zero.
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from cai.core.price_library import library_price
from cai.errors import InputError
from cai.limits import PRICES_BYTES, check_json, decode, read_bytes

Prices = dict[str, dict[str, float]]
FREE = ("local", "transformers")  # providers whose models cost nothing: they run on this machine


class Price(BaseModel):
    """USD per million tokens in and out."""

    model_config = ConfigDict(extra="forbid", strict=True)

    input: float = Field(ge=0, allow_inf_nan=False)
    output: float = Field(ge=0, allow_inf_nan=False)
    batch_input: float | None = Field(None, ge=0, allow_inf_nan=False)
    batch_output: float | None = Field(None, ge=0, allow_inf_nan=False)
    cached_input: float | None = Field(None, ge=0, allow_inf_nan=False)
    cache_write: float | None = Field(None, ge=0, allow_inf_nan=False)
    batch_cached_input: float | None = Field(None, ge=0, allow_inf_nan=False)
    batch_cache_write: float | None = Field(None, ge=0, allow_inf_nan=False)


_TABLE = TypeAdapter(dict[str, Price])

# pydantic error type → what to tell the user
_MESSAGES = {
    "missing": "missing",
    "extra_forbidden": f"unknown field (expected {', '.join(Price.model_fields)})",
    "float_type": "must be a number",
    "float_parsing": "must be a number",
    "finite_number": "must be a finite number",
    "greater_than_equal": "must be >= 0",
    "model_type": 'must be an object like {"input": 2.5, "output": 10.0}',
    "dict_type": 'must be an object like {"input": 2.5, "output": 10.0}',
}


class _Duplicate(Exception):
    """A key given twice in one JSON object."""


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """JSON object hook: a key given twice (json.loads would silently keep the last value) is an error."""
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise _Duplicate(k)
        out[k] = v
    return out


def _field(loc: tuple[int | str, ...]) -> str:
    """`"openai:gpt-4o".input` for the pydantic location ("openai:gpt-4o", "input")."""
    head, *rest = loc
    return ".".join([json.dumps(head, ensure_ascii=False), *map(str, rest)])


def parse_prices(raw: bytes, path: str) -> Prices:
    """Validate a price table's bytes; `path` is only used in error messages."""
    text = decode(raw, path)
    check_json(text, path)
    try:
        data = json.loads(text, object_pairs_hook=_no_duplicates)
    except json.JSONDecodeError as e:
        raise InputError(f"malformed JSON ({e.msg}, column {e.colno})", path=path, line=e.lineno) from None
    except _Duplicate as e:
        raise InputError(f"duplicate key {json.dumps(e.args[0], ensure_ascii=False)}", path=path) from None
    if not isinstance(data, dict):
        raise InputError('a price table must be a JSON object of model patterns, e.g. '
                         '{"openai:gpt-4o*": {"input": 2.5, "output": 10.0}}', path=path)
    try:
        table = _TABLE.validate_python({k: v for k, v in data.items() if not k.startswith("_")})
    except ValidationError as e:
        err = e.errors()[0]
        where = _field(err["loc"])
        raise InputError(f"{where}: {_MESSAGES.get(err['type'], err['msg'])}", path=path) from None
    return {pattern: price.model_dump(exclude_none=True) for pattern, price in table.items()}


def load_prices(path: str | Path | None = None) -> Prices:
    """The table in `path`, fully validated (InputError naming file and line or field); without a path an
    empty table, so that every price comes from `price_of`'s defaults."""
    if path is None or str(path) == "":
        return {}
    return parse_prices(read_bytes(Path(path), PRICES_BYTES, "price table"), str(path))


def price_of(spec: str, prices: Prices) -> dict[str, float] | None:
    """The price of a model spec (e.g. `openai:gpt-4o-mini`): the first pattern of the table matching it, else 0
    for a `local` model, else the `genai-prices` library's (`cai.core.price_library`), else None."""
    for pattern, price in prices.items():
        if fnmatch.fnmatch(spec, pattern):
            return price
    if spec.partition(":")[0] in FREE:
        return {"input": 0.0, "output": 0.0}
    return library_price(spec)


def call_rates(price: Mapping[str, float], batch: bool = False) -> dict[str, float]:
    """The USD-per-million prices a call is charged at: `input` (uncached prompt tokens), `output`,
    `cached_input` and `cache_write`. A batch call (`batch`) takes `batch_input` / `batch_output`, or the
    standard price where the entry has none. Cached prompt tokens take `cached_input`, or the input price
    when there is none, and never more than the input price; cache writes take `cache_write`, or the input
    price. A batch call takes `batch_cached_input` / `batch_cache_write` where the entry has them, else the
    prices above (an upper bound)."""
    rate_in, rate_out = price["input"], price["output"]
    if batch:
        rate_in, rate_out = price.get("batch_input", rate_in), price.get("batch_output", rate_out)
    cached, written = price.get("cached_input", rate_in), price.get("cache_write", rate_in)
    if batch:
        cached, written = price.get("batch_cached_input", cached), price.get("batch_cache_write", written)
    return {"input": rate_in, "output": rate_out, "cached_input": min(cached, rate_in), "cache_write": written}


def call_price(spec: str, prices: Prices, batch: bool = False) -> dict[str, float] | None:
    """`call_rates` of the model spec's price (`price_of`), or None if it has none."""
    price = price_of(spec, prices)
    return None if price is None else call_rates(price, batch)


def cost(tokens: Mapping[str, int], rates: Mapping[str, float]) -> float:
    """USD for token counts (`tokens_in`, `tokens_out`, and the parts of tokens_in `tokens_cached` and
    `tokens_cache_write`, 0 when absent) at `call_rates` prices."""
    cached, written = tokens.get("tokens_cached", 0), tokens.get("tokens_cache_write", 0)
    uncached = max(tokens["tokens_in"] - cached - written, 0)
    return (uncached * rates["input"] + cached * rates["cached_input"] + written * rates["cache_write"]
            + tokens["tokens_out"] * rates["output"]) / 1e6
