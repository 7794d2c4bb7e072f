"""The price table: the shipped one loads, an override is validated in full, errors name file and line or field."""

from __future__ import annotations

import json

import pytest

from cai.core.prices import load_prices, price_of
from cai.errors import InputError
from cai.limits import PRICES_BYTES


def test_shipped_table_loads_and_matches_first_pattern():
    prices = load_prices(None)
    assert prices and not any(k.startswith("_") for k in prices)
    assert all({"input", "output"} <= set(v) <= {"input", "output", "batch_input", "batch_output", "cached_input",
                                                 "cache_write"} for v in prices.values())
    assert price_of("local", prices) == {"input": 0.0, "output": 0.0}
    assert price_of("openai:gpt-4o-mini-2024-07-18", prices)["input"] == 0.15  # before gpt-4o*
    assert price_of("openai:gpt-4o", prices)["input"] == 2.5
    assert price_of("openai:some-other-model", prices) is None


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
     '"m".cached: unknown field (expected input, output, batch_input, batch_output, cached_input, cache_write)'),
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
