"""Cost: batch and cached-input prices, prompt-cache usage from both APIs in the call rows, manifest and
estimate, Anthropic prompt caching of the static prompt prefix, and `--fewshot N`. Against the loopback stub
through the real openai / anthropic SDKs."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

import cai
from cai.calls import Completion, GenConfig, Request, cache_key
from cai.constitution import load
from cai.core.prices import call_rates, load_prices
from cai.core.stages import critique_request, repair_request, revise_request
from cai.errors import InputError
from cai.prompts import fewshot, render
from cai.providers import anthropic_api
from cai.providers.anthropic_api import AnthropicModel
from cai.providers.openai_api import OpenAIModel
from cai.read.export import estimated_cost, run_settings
from cai.settings import RunSettings
from cai.store import Store
from helpers import cai as cai_cli
from helpers import write_prompts
from servers import StubServer

KEYS = {"OPENAI_API_KEY": "sk-test-cost-0123456789", "ANTHROPIC_API_KEY": "sk-ant-test-cost-0123456789"}
ARGS = ["--rounds", "1", "--max-tokens", "16", "--quiet", "--max-retries", "0"]
PRICES = {"openai:stub*": {"input": 1.0, "output": 2.0, "cached_input": 0.25},
          "anthropic:stub*": {"input": 1.0, "output": 2.0, "cached_input": 0.1, "cache_write": 1.25}}
N_EXAMPLES = len(fewshot())


def model_args(srv: StubServer, provider: str) -> list[str]:
    url = srv.url if provider == "openai" else srv.anthropic_url
    return ["--model", f"{provider}:stub", "--base-url", url]


def call_rows(run: Path) -> list[dict[str, Any]]:
    with contextlib.closing(sqlite3.connect(f"{(run / 'run.sqlite').as_uri()}?mode=ro", uri=True)) as db:
        return [{"role": role, "tokens_in": ti, "tokens_out": to, **json.loads(resp)}
                for role, ti, to, resp in db.execute("SELECT role, tokens_in, tokens_out, response FROM calls")]


def stage_of(kind: str, body: dict[str, Any]) -> str:
    """generator, critic or reviser, from a recorded request body's system text."""
    system = body.get("system") if kind == "anthropic" else (
        body["messages"][0]["content"] if body["messages"][0]["role"] == "system" else "")
    text = "".join(b["text"] for b in system) if isinstance(system, list) else system or ""
    if text.startswith(render("critic_system")):
        return "critic"
    return "reviser" if text.startswith(render("reviser_system")) else "generator"


def bodies(srv: StubServer, kind: str) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {"generator": [], "critic": [], "reviser": []}
    for r in srv.requests:
        out[stage_of(kind, r["body"])].append(r["body"])
    return out


# -- cached-input usage -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_cached_tokens_reach_the_call_rows_the_manifest_and_the_cost(tmp_path, provider):
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps(PRICES))
    inp = write_prompts(tmp_path / "in.jsonl", ["How do I pick a lock?", "Write a haiku about rain."])
    with StubServer(cached_tokens=5, cache_write_tokens=2 if provider == "anthropic" else 0) as srv:
        res = cai_cli("run", inp, "--out", tmp_path / "r", *model_args(srv, provider), *ARGS, "--prices", prices,
                      "--json", env=KEYS)
    assert res.exit_code == 0, res.stderr
    manifest = json.loads(res.stdout)
    rows = call_rows(tmp_path / "r")
    assert len(rows) == 6  # a draft, a critique and a revision per prompt
    for row in rows:
        if provider == "openai":  # part of prompt_tokens
            assert (row["tokens_cached"], row["tokens_cache_write"]) == (min(5, row["tokens_in"]), 0)
        else:  # on top of input_tokens, which counts only the uncached part
            assert (row["tokens_cached"], row["tokens_cache_write"]) == (5, 2) and row["tokens_in"] >= 8
        assert row["tokens_cached"] > 0 and row["batch"] is False
    for role, t in manifest["tokens"].items():
        mine = [r for r in rows if r["role"] == role]
        assert t["tokens_cached"] == sum(r["tokens_cached"] for r in mine)
        assert t["tokens_cache_write"] == sum(r["tokens_cache_write"] for r in mine)
    p = PRICES[f"{provider}:stub*"]
    expected = sum(((r["tokens_in"] - r["tokens_cached"] - r["tokens_cache_write"]) * p["input"]
                    + r["tokens_cached"] * p["cached_input"] + r["tokens_cache_write"] * p.get("cache_write", 0)
                    + r["tokens_out"] * p["output"]) / 1e6 for r in rows)
    uncached = sum((r["tokens_in"] * p["input"] + r["tokens_out"] * p["output"]) / 1e6 for r in rows)
    assert manifest["estimated_cost_usd"] == pytest.approx(expected, abs=1e-6)
    assert manifest["estimated_cost_usd"] != pytest.approx(uncached, abs=1e-6)
    assert manifest["this_invocation"]["estimated_cost_usd"] == pytest.approx(expected)  # the progress line's
    calls = cai.open_run(tmp_path / "r").calls()
    assert {"tokens_cached", "tokens_cache_write", "batch"} <= set(calls.columns)
    assert calls["tokens_cached"].sum() == sum(r["tokens_cached"] for r in rows)


def test_replies_without_cache_usage_and_older_stores_read_as_zero(tmp_path, stub_server):
    inp = write_prompts(tmp_path / "in.jsonl", ["hi?"])
    res = cai_cli("run", inp, "--out", tmp_path / "r", *model_args(stub_server, "openai"), *ARGS, env=KEYS)
    assert res.exit_code == 0, res.stderr
    assert all(r["tokens_cached"] == 0 == r["tokens_cache_write"] for r in call_rows(tmp_path / "r"))
    with contextlib.closing(sqlite3.connect(tmp_path / "r" / "run.sqlite")) as db, db:  # as older versions wrote it
        db.execute("UPDATE calls SET response = json_remove(response, '$.tokens_cached', '$.tokens_cache_write', "
                   "'$.batch')")
    store = Store.open_run(tmp_path / "r", readonly=True)
    try:
        totals = store.token_totals()
        assert totals and all(t["tokens_cached"] == 0 == t["tokens_cache_write"] for t in totals.values())
        assert store.token_totals(batch=False) == totals and store.token_totals(batch=True) == {}
    finally:
        store.close()


# -- batch prices -------------------------------------------------------------------------------------------------

def test_a_batch_flagged_completion_is_priced_at_the_batch_price(tmp_path):
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps({"openai:m": {"input": 2.0, "output": 8.0, "batch_input": 1.0, "batch_output": 4.0,
                                               "cached_input": 0.5}}))
    (tmp_path / "r").mkdir()
    store = Store(tmp_path / "r")
    try:
        store.set_meta("settings", RunSettings.from_options(input="in.jsonl", out=tmp_path / "r",
                                                            prices=prices).model_dump())
        store.set_meta("models", {"generator": "openai:m"})
        store.add_call("live", "generator", "openai:m", Completion(text="a", tokens_in=1000, tokens_out=100))
        store.add_call("batched", "generator", "openai:m", Completion(text="b", tokens_in=1000, tokens_out=100,
                                                                     tokens_cached=400, batch=True))
        asyncio.run(store.flush())
        assert store.get_call("batched").batch is True and store.get_call("live").batch is False
        assert store.token_totals(batch=True)["generator"]["tokens_cached"] == 400
        live = (1000 * 2.0 + 100 * 8.0) / 1e6
        batched = (600 * 1.0 + 400 * 0.5 + 100 * 4.0) / 1e6
        assert estimated_cost(store, run_settings(store)) == pytest.approx(live + batched)
    finally:
        store.close()


def test_call_price_falls_back_to_prices_the_table_has():
    full = {"input": 3.0, "output": 15.0, "batch_input": 1.5, "batch_output": 7.5, "cached_input": 0.3,
            "cache_write": 3.75}
    assert call_rates(full) == {"input": 3.0, "output": 15.0, "cached_input": 0.3, "cache_write": 3.75}
    assert call_rates(full, batch=True) == {"input": 1.5, "output": 7.5, "cached_input": 0.3, "cache_write": 3.75}
    bare = {"input": 2.0, "output": 8.0}
    assert call_rates(bare, batch=True) == {"input": 2.0, "output": 8.0, "cached_input": 2.0, "cache_write": 2.0}
    assert call_rates({"input": 1.0, "output": 1.0, "cached_input": 5.0})["cached_input"] == 1.0  # never above input
    batch_cache = {**full, "batch_cached_input": 0.15, "batch_cache_write": 1.875}
    assert call_rates(batch_cache) == call_rates(full)
    assert call_rates(batch_cache, batch=True) == {"input": 1.5, "output": 7.5, "cached_input": 0.15,
                                                   "cache_write": 1.875}
    assert call_rates({"input": 2.0, "output": 8.0, "batch_input": 1.0, "cached_input": 1.5}, batch=True) == {
        "input": 1.0, "output": 8.0, "cached_input": 1.0, "cache_write": 1.0}  # cached never above batch input


@pytest.mark.parametrize("entry, message", [
    ('{"input": 1, "output": 2, "batch_input": "0.5"}', '"m".batch_input: must be a number'),
    ('{"input": 1, "output": 2, "batch_output": true}', '"m".batch_output: must be a number'),
    ('{"input": 1, "output": 2, "cached_input": -0.1}', '"m".cached_input: must be >= 0'),
    ('{"input": 1, "output": 2, "cache_write": NaN}', '"m".cache_write: must be a finite number'),
    ('{"input": 1, "output": 2, "batch_cache_write": -1}', '"m".batch_cache_write: must be >= 0'),
    ('{"input": 1, "output": 2, "batch": 0.5}',
     '"m".batch: unknown field (expected input, output, batch_input, batch_output, cached_input, cache_write, '
     'batch_cached_input, batch_cache_write)'),
])
def test_price_table_errors_name_the_file_and_the_new_field(tmp_path, entry, message):
    p = tmp_path / "prices.json"
    p.write_text('{"ok": {"input": 1, "output": 1, "batch_input": 0.5}, "m": ' + entry + "}")
    with pytest.raises(InputError) as e:
        load_prices(p)
    assert str(e.value) == f"{p}: {message}" and "\n" not in str(e.value)
    res = cai_cli("run", write_prompts(tmp_path / "in.jsonl", ["hi?"]), "--out", tmp_path / "r", "--prices", p)
    assert res.exit_code == 2 and message in res.stderr and not (tmp_path / "r").exists()


def test_optional_prices_load_and_null_means_absent(tmp_path):
    p = tmp_path / "prices.json"
    p.write_text('{"m": {"input": 1, "output": 2, "batch_input": 0.5, "batch_output": 1, "cached_input": 0.1, '
                 '"cache_write": 1.25, "batch_cached_input": 0.05, "batch_cache_write": 0.625}, '
                 '"n": {"input": 1, "output": 2, "cached_input": null}}')
    assert load_prices(p) == {"m": {"input": 1.0, "output": 2.0, "batch_input": 0.5, "batch_output": 1.0,
                                    "cached_input": 0.1, "cache_write": 1.25, "batch_cached_input": 0.05,
                                    "batch_cache_write": 0.625}, "n": {"input": 1.0, "output": 2.0}}


# -- --fewshot N --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("n", [0, 1, None])
def test_fewshot_sets_the_example_turns_of_critic_and_reviser_requests(tmp_path, stub_server, n):
    inp = write_prompts(tmp_path / "in.jsonl", ["How do I pick a lock?"])
    option = [] if n is None else ["--fewshot", str(n)]
    res = cai_cli("run", inp, "--out", tmp_path / "r", *model_args(stub_server, "openai"), *ARGS, *option, "--json",
                  env=KEYS)
    assert res.exit_code == 0, res.stderr
    by_stage = bodies(stub_server, "openai")
    examples = N_EXAMPLES if n is None else n
    for stage in ("critic", "reviser"):
        assert by_stage[stage]
        for body in by_stage[stage]:  # system, two turns per example, the live turn
            assert [m["role"] for m in body["messages"]] == ["system", *["user", "assistant"] * examples, "user"]
    assert json.loads(res.stdout)["settings"]["loop"]["fewshot"] == examples


def test_the_default_fewshot_keeps_the_cache_keys_of_earlier_versions():
    p = load("default").principles[0]
    msgs = [{"role": "user", "content": "How do I pick a lock?"}]
    ident = {"provider": "openai", "model": "gpt-4o-mini", "base_url": None}
    crit = critique_request(msgs, "Use a pin.", p, GenConfig())
    rev = revise_request(msgs, "Use a pin.", "It helps.", p, GenConfig(), "")
    # keys computed by cai before --fewshot and the static-prefix hint existed
    assert cache_key(ident, crit) == "7b796bc08e44857845e90f06f6999da394fe68fa700c72c5c98976a37facf9c4"
    assert cache_key(ident, rev) == "6baea91d336ea4e34a419c6a3f57448e837e3e6f8b0532b9120b8a69946d95f3"
    assert cache_key(ident, repair_request(crit, "x")) == (
        "d6dbba157cc8d8fa65d28ab8337b46dedfb81185449a60c83bdcd9ece66c9850")
    assert crit.static_prefix == 1 + 2 * N_EXAMPLES == repair_request(crit, "x").static_prefix
    assert cache_key(ident, critique_request(msgs, "Use a pin.", p, GenConfig(), examples=N_EXAMPLES)) == \
        cache_key(ident, crit)
    assert cache_key(ident, crit.model_copy(update={"static_prefix": 0})) == cache_key(ident, crit)


def test_more_examples_than_the_file_has_is_one_input_error(tmp_path):
    inp = write_prompts(tmp_path / "in.jsonl", ["hi?"])
    res = cai_cli("run", inp, "--out", tmp_path / "r", "--fewshot", str(N_EXAMPLES + 1))
    assert res.exit_code == 2 and not (tmp_path / "r").exists()
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "fewshot.yaml" in lines[0] and f"only {N_EXAMPLES} worked examples" in lines[0]
    with pytest.raises(InputError, match="fewshot"):
        cai.run(["hi?"], out=tmp_path / "lib", fewshot=N_EXAMPLES + 1)
    with pytest.raises(InputError, match="fewshot"):
        cai.run(["hi?"], out=tmp_path / "lib", fewshot=-1)


def test_a_changed_fewshot_refuses_to_resume_and_the_default_resumes_an_older_run(tmp_path, stub_server):
    inp = write_prompts(tmp_path / "in.jsonl", ["hi?", "Write a haiku."])
    run = ["run", inp, "--out", tmp_path / "r", *model_args(stub_server, "openai"), *ARGS]
    assert cai_cli(*run, env=KEYS).exit_code == 0
    changed = cai_cli(*run, "--fewshot", "1", env=KEYS)
    assert changed.exit_code == 2 and "was made with fewshot" in changed.stderr
    store = Store.open_run(tmp_path / "r")  # now as a version without --fewshot wrote the run
    try:
        fp, settings = store.get_meta("fingerprint"), store.get_meta("settings")
        del fp["fewshot"], settings["loop"]["fewshot"]
        store.set_meta("fingerprint", fp)
        store.set_meta("settings", settings)
    finally:
        store.close()
    sent = stub_server.count()
    assert cai_cli(*run, env=KEYS).exit_code == 0
    assert cai_cli(*run, "--fewshot", str(N_EXAMPLES), env=KEYS).exit_code == 0  # the default, spelled out
    assert stub_server.count() == sent  # resumed: every reply came from the store
    again = cai_cli(*run, "--fewshot", "0", env=KEYS)
    assert again.exit_code == 2 and "was made with fewshot" in again.stderr


def test_fewshot_through_the_library(tmp_path, stub_server, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEYS["OPENAI_API_KEY"])
    r = cai.run(["hi?"], out=tmp_path / "r", model="openai:stub", base_url=stub_server.url, rounds=1, max_tokens=16,
                fewshot=1)
    assert r.manifest["settings"]["loop"]["fewshot"] == 1
    assert all(len(b["messages"]) == 4 for b in bodies(stub_server, "openai")["critic"])


# -- Anthropic prompt caching -------------------------------------------------------------------------------------

def long_request(system_chars: int, static: int) -> Request:
    system = ("Judge the response against the principle. " * (system_chars // 43 + 1))[:system_chars]
    msgs = ({"role": "system", "content": system}, {"role": "user", "content": "Example task."},
            {"role": "assistant", "content": "Example answer."}, {"role": "user", "content": "The live task."})
    return Request(messages=msgs, config=GenConfig(max_tokens=16), static_prefix=static)


async def send(model: Any, request: Request) -> Completion:
    try:
        return await model.complete(request)
    finally:
        await model.aclose()


def marked_blocks(body: dict[str, Any]) -> list[str]:
    """Where the body carries cache_control: 'system' or 'messages[i]'."""
    where = []
    if isinstance(body.get("system"), list):
        where += ["system" for b in body["system"] if "cache_control" in b]
    for i, m in enumerate(body["messages"]):
        if isinstance(m["content"], list):
            where += [f"messages[{i}]" for b in m["content"] if "cache_control" in b]
    assert json.dumps(body).count("cache_control") == len(where)
    return where


@pytest.mark.parametrize("model, system_chars, static, marked", [
    ("claude-sonnet-4-0", 6000, 3, ["messages[1]"]),  # ~1500 tokens ≥ 1024: the last example turn
    ("claude-sonnet-4-0", 6000, 1, ["system"]),  # no examples: the system text
    ("claude-sonnet-4-0", 2000, 3, []),  # ~500 tokens: too short to cache
    ("claude-haiku-4-5", 6000, 3, []),  # Haiku 4.5 caches from 4096 tokens
    ("claude-haiku-4-5", 20000, 3, ["messages[1]"]),
    ("some-future-claude", 6000, 3, []),  # unknown model: the largest known minimum
    ("claude-sonnet-4-0", 6000, 0, []),  # no static prefix: nothing marked
])
def test_anthropic_requests_mark_only_long_enough_static_prefixes(stub_server, monkeypatch, model, system_chars,
                                                                   static, marked):
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEYS["ANTHROPIC_API_KEY"])
    request = long_request(system_chars, static)
    asyncio.run(send(AnthropicModel(model, stub_server.anthropic_url), request))
    body = stub_server.requests[-1]["body"]
    assert marked_blocks(body) == marked
    text = "".join(b["text"] for b in body["system"]) if isinstance(body["system"], list) else body["system"]
    assert text == request.messages[0]["content"]  # the same text, only sent as a block when marked
    turns = [m["content"] if isinstance(m["content"], str) else "".join(b["text"] for b in m["content"])
             for m in body["messages"]]
    assert turns == [m["content"] for m in request.messages[1:]]


def test_the_marker_keeps_a_merged_live_turn_as_its_own_block(stub_server, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEYS["ANTHROPIC_API_KEY"])
    msgs = ({"role": "system", "content": "x" * 6000}, {"role": "user", "content": "static"},
            {"role": "user", "content": "live"})  # Anthropic turns alternate: the two user turns are merged
    asyncio.run(send(AnthropicModel("claude-sonnet-4-0", stub_server.anthropic_url),
                     Request(messages=msgs, static_prefix=2)))
    content = stub_server.requests[-1]["body"]["messages"][0]["content"]
    assert content == [{"type": "text", "text": "static\n\n", "cache_control": {"type": "ephemeral"}},
                       {"type": "text", "text": "live"}]


def test_anthropic_cache_usage_and_unchanged_openai_requests(monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEYS["ANTHROPIC_API_KEY"])
    monkeypatch.setenv("OPENAI_API_KEY", KEYS["OPENAI_API_KEY"])
    request = long_request(6000, 3)
    with StubServer(cached_tokens=1500, cache_write_tokens=20) as srv:
        comp = asyncio.run(send(AnthropicModel("claude-sonnet-4-0", srv.anthropic_url), request))
        words = sum(len(m["content"].split()) for m in request.messages)
        assert (comp.tokens_in, comp.tokens_cached, comp.tokens_cache_write) == (words + 1520, 1500, 20)
        comp = asyncio.run(send(OpenAIModel("gpt-4o-mini", srv.url), request))
        body = srv.requests[-1]["body"]
    assert body["messages"] == [dict(m) for m in request.messages] and "cache_control" not in json.dumps(body)
    assert (comp.tokens_in, comp.tokens_cached, comp.tokens_cache_write) == (words, min(1500, words), 0)


def test_a_run_marks_the_critic_and_reviser_examples_and_nothing_else(tmp_path, stub_server, monkeypatch):
    inp = write_prompts(tmp_path / "in.jsonl", ["How do I pick a lock?", "Write a haiku about rain."])
    args = ["run", inp, *model_args(stub_server, "anthropic"), *ARGS]
    assert cai_cli(*args, "--out", tmp_path / "shipped", env=KEYS).exit_code == 0
    assert "cache_control" not in json.dumps([r["body"] for r in stub_server.requests])  # shipped prompts: too short
    stub_server.reset()
    monkeypatch.setattr(anthropic_api, "CACHE_MIN_DEFAULT", 64)  # as for a model that caches short prefixes
    assert cai_cli(*args, "--out", tmp_path / "marked", env=KEYS).exit_code == 0
    by_stage = bodies(stub_server, "anthropic")
    assert by_stage["generator"] and all(marked_blocks(b) == [] for b in by_stage["generator"])
    for stage in ("critic", "reviser"):
        assert by_stage[stage]
        for body in by_stage[stage]:  # the last worked example's answer ends the static prefix
            assert marked_blocks(body) == [f"messages[{2 * N_EXAMPLES - 1}]"]
            assert body["messages"][-1]["role"] == "user" and isinstance(body["messages"][-1]["content"], str)
    assert cai_cli(*args, "--out", tmp_path / "marked", "--fewshot", "0", env=KEYS).exit_code == 2  # fingerprinted
    rows = call_rows(tmp_path / "marked")  # the marker is not in the cache key: the same calls as unmarked
    assert {r["text"] for r in rows} == {r["text"] for r in call_rows(tmp_path / "shipped")}
