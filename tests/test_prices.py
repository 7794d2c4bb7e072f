"""Prices: OpenAI and Anthropic models priced by the genai-prices library (batch at its batch price or half),
`local` free, a `--prices` file overriding the models it matches and validated in full, its errors naming file and
line or field."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from genai_prices import Usage, calc_price

from cai.core.price_library import BATCH, library_price
from cai.core.prices import call_price, call_rates, cost, load_prices, price_of
from cai.errors import InputError
from cai.limits import PRICES_BYTES

# a call's token counts as cai stores them (tokens_in counts the cached and cache-written tokens too), kept under
# the 200k-token threshold above which some models charge a higher tier
TOKENS = {"tokens_in": 9_000, "tokens_cached": 4_000, "tokens_cache_write": 2_000, "tokens_out": 700}
LIBRARY_MODELS = ["openai:gpt-4o-mini", "openai:gpt-4o", "openai:gpt-4.1-nano", "anthropic:claude-sonnet-4-5",
                  "anthropic:claude-haiku-4-5", "anthropic:claude-opus-4-1", "anthropic:claude-sonnet-4-20250514"]


def library_usd(spec: str, tokens: dict[str, int], batch: bool = False, when: datetime | None = None) -> float:
    """What genai-prices itself charges for these tokens (its batch price variant with `batch`) at `when`."""
    provider, _, name = spec.partition(":")
    usage = Usage(input_tokens=tokens["tokens_in"], cache_read_tokens=tokens.get("tokens_cached", 0),
                  cache_write_tokens=tokens.get("tokens_cache_write", 0), output_tokens=tokens["tokens_out"])
    return float(calc_price(usage, name, provider_id=provider, genai_request_timestamp=when,
                            price_context=BATCH if batch else None).total_price)


def has_batch_price(spec: str, when: datetime | None = None) -> bool:
    return library_usd(spec, TOKENS, batch=True, when=when) != library_usd(spec, TOKENS, when=when)


def test_without_a_file_there_is_no_table():
    assert load_prices(None) == {} and load_prices("") == {}


@pytest.mark.parametrize("spec", LIBRARY_MODELS)
def test_openai_and_anthropic_prices_come_from_the_library(spec):
    rates = call_price(spec, load_prices())
    assert rates is not None
    assert cost(TOKENS, rates) == pytest.approx(library_usd(spec, TOKENS), rel=1e-12)
    assert cost({"tokens_in": 1000, "tokens_out": 0}, rates) == pytest.approx(library_usd(spec, {
        "tokens_in": 1000, "tokens_out": 0}))  # the uncached input price alone


@pytest.mark.parametrize("spec", LIBRARY_MODELS)
def test_a_batch_call_takes_the_library_batch_price_or_half_the_standard_one(spec):
    standard, batch = call_price(spec, {}), call_price(spec, {}, batch=True)
    if has_batch_price(spec):
        assert cost(TOKENS, batch) == pytest.approx(library_usd(spec, TOKENS, batch=True), rel=1e-12)
    else:  # half the input and output price; cached and cache-write tokens at their standard price
        assert batch == {"input": standard["input"] / 2, "output": standard["output"] / 2,
                         "cached_input": min(standard["cached_input"], standard["input"] / 2),
                         "cache_write": standard["cache_write"]}


def test_both_rules_for_batch_prices_are_exercised():
    """The library has a batch price for some of LIBRARY_MODELS and none for others (else a test above is idle)."""
    assert {has_batch_price(spec) for spec in LIBRARY_MODELS} == {True, False}


def test_cached_and_cache_write_rates_are_the_library_ones():
    for spec in ("anthropic:claude-sonnet-4-5", "openai:gpt-4o-mini"):
        rates = call_price(spec, {})
        cached_only = {"tokens_in": 5_000, "tokens_cached": 5_000, "tokens_out": 0}
        assert cost(cached_only, rates) == pytest.approx(library_usd(spec, cached_only))
        assert rates["cached_input"] < rates["input"]
    written = {"tokens_in": 5_000, "tokens_cache_write": 5_000, "tokens_out": 0}
    rates = call_price("anthropic:claude-sonnet-4-5", {})
    assert cost(written, rates) == pytest.approx(library_usd("anthropic:claude-sonnet-4-5", written))
    assert rates["cache_write"] > rates["input"]  # Anthropic charges more for cache writes
    assert call_price("openai:gpt-4o-mini", {})["cache_write"] == call_price("openai:gpt-4o-mini", {})["input"]


def test_local_is_free_and_unknown_models_have_no_price():
    zero = {"input": 0.0, "output": 0.0, "cached_input": 0.0, "cache_write": 0.0}
    assert call_price("local", {}) == zero == call_price("local:/models/x.gguf", {}, batch=True)
    assert price_of("openai:some-other-model", {}) is None
    assert price_of("anthropic:stub", {}) is None
    assert price_of("openai:", {}) is None
    assert price_of("shout:gpt-4o", {}) is None  # the library is asked only for OpenAI and Anthropic models
    assert price_of("openai:claude-sonnet-4-5", {}) is None  # nor for another provider's models


def test_a_file_overrides_the_models_it_matches_and_leaves_the_others_to_the_library(tmp_path):
    p = tmp_path / "prices.json"
    p.write_text(json.dumps({"openai:gpt-4o-mini": {"input": 9, "output": 9}, "local*": {"input": 1, "output": 1}}))
    prices = load_prices(p)
    assert call_price("openai:gpt-4o-mini", prices) == {"input": 9.0, "output": 9.0, "cached_input": 9.0,
                                                        "cache_write": 9.0}
    assert call_price("openai:gpt-4o-mini", prices, batch=True)["input"] == 9.0  # the file's, not half of it
    assert call_price("local", prices)["input"] == 1.0
    for spec in ("openai:gpt-4o", "openai:gpt-4o-mini-2024-07-18", "anthropic:claude-haiku-4-5"):
        assert call_price(spec, prices) == call_price(spec, {})
        assert cost(TOKENS, call_price(spec, prices)) == pytest.approx(library_usd(spec, TOKENS))


@pytest.mark.parametrize("when", [datetime(2025, 6, 1, tzinfo=UTC), datetime(2025, 6, 1, 23, 59),
                                  datetime(2030, 1, 1, tzinfo=UTC)])
def test_the_price_of_a_given_day(when):
    for spec in LIBRARY_MODELS:
        entry = library_price(spec, when)
        assert cost(TOKENS, call_rates(entry)) == pytest.approx(library_usd(spec, TOKENS, when=when))
        if has_batch_price(spec, when):
            assert cost(TOKENS, call_rates(entry, batch=True)) == pytest.approx(
                library_usd(spec, TOKENS, batch=True, when=when))
        else:
            assert call_rates(entry, batch=True)["input"] == entry["input"] / 2


def test_a_tiered_price_gives_its_base_tier():
    base = library_price("anthropic:claude-sonnet-4-5")
    small = {"tokens_in": 150_000, "tokens_out": 0}
    assert cost(small, call_rates(base)) == pytest.approx(library_usd("anthropic:claude-sonnet-4-5", small))


def test_override_file(tmp_path):
    p = tmp_path / "prices.json"
    p.write_text(json.dumps({"_note": ["comments", "are", "anything"], "openai:*": {"input": 1, "output": 2.5}}))
    prices = load_prices(p)
    assert prices == {"openai:*": {"input": 1.0, "output": 2.5}}
    assert price_of("openai:x", prices) == {"input": 1.0, "output": 2.5}
    assert price_of("anthropic:x", prices) is None
    assert load_prices(str(p)) == prices


def test_bom_is_accepted(tmp_path):
    p = tmp_path / "prices.json"
    p.write_bytes(b"\xef\xbb\xbf" + json.dumps({"m": {"input": 0, "output": 0}}).encode())
    assert load_prices(p) == {"m": {"input": 0.0, "output": 0.0}}


def test_json_syntax_error_names_file_and_line(tmp_path):
    p = tmp_path / "prices.json"
    p.write_text('{\n  "a": {"input": 1, "output": 2},\n  "b": {"input": 1 "output": 2}\n}\n')
    with pytest.raises(InputError) as e:
        load_prices(p)
    assert str(e.value).startswith(f"{p}:3: malformed JSON (")
    assert e.value.exit_code == 2


@pytest.mark.parametrize("table,message", [
    ([1, 2], 'a price table must be a JSON object of model patterns, e.g. {"openai:gpt-4o*": {"input": 2.5, '
             '"output": 10.0}}'),
    ({"openai:gpt-4o": {"input": "2.5", "output": 10}}, '"openai:gpt-4o".input: must be a number'),
    ({"openai:gpt-4o": {"input": True, "output": 10}}, '"openai:gpt-4o".input: must be a number'),
    ({"m": {"input": 1, "output": -0.5}}, '"m".output: must be >= 0'),
    ({"m": {"input": 1}}, '"m".output: missing'),
    ({"m": {"input": 1, "output": 2, "cached": 0.5}},
     '"m".cached: unknown field (expected input, output, batch_input, batch_output, cached_input, cache_write, '
     'batch_cached_input, batch_cache_write)'),
    ({"m": 3}, '"m": must be an object like {"input": 2.5, "output": 10.0}'),
    ({"ok": {"input": 1, "output": 1}, "m": None}, '"m": must be an object like {"input": 2.5, "output": 10.0}'),
])
def test_schema_error_names_file_and_field(tmp_path, table, message):
    p = tmp_path / "prices.json"
    p.write_text(json.dumps(table))
    with pytest.raises(InputError) as e:
        load_prices(p)
    assert str(e.value) == f"{p}: {message}"


@pytest.mark.parametrize("text,message", [
    ('{"m": {"input": NaN, "output": 1}}', '"m".input: must be a finite number'),
    ('{"m": {"input": 1, "output": Infinity}}', '"m".output: must be a finite number'),
    ('{"m": {"input": 1, "output": 1}, "m": {"input": 2, "output": 2}}', 'duplicate key "m"'),
])
def test_non_finite_and_duplicate_entries(tmp_path, text, message):
    p = tmp_path / "prices.json"
    p.write_text(text)
    with pytest.raises(InputError) as e:
        load_prices(p)
    assert str(e.value) == f"{p}: {message}"


def test_missing_and_non_utf8_files(tmp_path):
    with pytest.raises(InputError) as e:
        load_prices(tmp_path / "nope.json")
    assert str(e.value).startswith(f"{tmp_path / 'nope.json'}: cannot read price table")
    p = tmp_path / "latin1.json"
    p.write_bytes(b'{"caf\xe9": {"input": 1, "output": 1}}')
    with pytest.raises(InputError) as e:
        load_prices(p)
    assert str(e.value).startswith(f"{p}:1: not UTF-8")


@pytest.mark.parametrize(("text", "message"), [
    ('{"m": {"input": 1, "output": 1},\n "x": ' + "[" * 20_000 + "]" * 20_000 + "}",
     "2: nested more than 100 levels deep"),
    ('{\n  "m": {"input": 1, "output": 1},\n  "n": {"input": ' + "9" * 5_000 + ', "output": 1}\n}',
     "3: an integer of 5000 digits (at most 4300)"),
], ids=["deep", "long-integer"])
def test_deep_nesting_and_long_integers_name_their_line(tmp_path, text, message):
    p = tmp_path / "prices.json"
    p.write_text(text)
    with pytest.raises(InputError) as e:
        load_prices(p)
    assert str(e.value) == f"{p}:{message}"


def test_a_table_over_the_size_limit_is_refused_before_it_is_read(tmp_path):
    p = tmp_path / "prices.json"
    with p.open("wb") as fh:
        fh.truncate(PRICES_BYTES + 1)  # sparse: nothing written to disk
    with pytest.raises(InputError) as e:
        load_prices(p)
    assert str(e.value) == f"{p}: {PRICES_BYTES + 1:,} bytes, over the 1 MiB limit for a price table"
