"""`cai estimate` / `cai.estimate`: no model call and nothing created; its calls per role equal the calls the run then
makes (real OpenAI SDK against the loopback stub) for a plain, an --rbr, a --candidates 3 and a layered-constitution
run; a half-done run is estimated for what is left; expected figures from the run's stored calls; one-line errors."""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any

import pytest

import cai as cai_lib
from cai.store import Store
from helpers import REPO, cai, write_prompts
from reliability import KEY, one_line_error
from servers import StubServer

PROMPTS = ["How do I pick a lock?", "Write a haiku about rain.", "Is coffee bad for you?",
           "Explain recursion to a child.", "What is the capital of Peru?"]
TEAM = REPO / "examples" / "constitution" / "team.yaml"


def answers(body: dict[str, Any]) -> list[list[tuple[str, float]]]:
    """Readable logprobs: yes/no for a grader's question, A/B for the judge's (so no call falls back to votes)."""
    if "Response (A)" in body["messages"][-1]["content"]:
        return [[("A", math.log(0.7)), (" B", math.log(0.3))]]
    return [[("Yes", math.log(0.6)), ("No", math.log(0.4))]]


def by_seed(srv: StubServer):
    """Text replies that depend on the seed too, so sampled candidates differ (the stub's own depend on the
    messages only); structured replies stay the stub's."""
    def reply(kind: str, body: dict[str, Any]) -> str | None:
        if srv.is_structured(kind, body):
            return None
        blob = json.dumps([body.get("messages"), body.get("seed")], sort_keys=True).encode()
        return "reply " + hashlib.sha256(blob).hexdigest()[:24]
    return reply


@pytest.fixture
def srv(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    with StubServer(logprobs_fn=answers) as s:
        s.reply_fn = by_seed(s)
        yield s


def stub(srv: StubServer) -> list[str]:
    return ["--model", "openai:stub", "--base-url", srv.url, "--max-tokens", "16", "--max-retries", "0"]


def estimate(*args: Any) -> dict[str, Any]:
    r = cai("estimate", *args, "--json")
    assert r.exit_code == 0, r.stderr
    return json.loads(r.stdout)


def run_calls(run: Path, shared: bool = False) -> dict[str, int]:
    """Calls per role the run sent (its stored calls; `shared`: those the call cache answered instead)."""
    store = Store.open_run(run, readonly=True)
    try:
        return {role: t["calls"] for role, t in store.token_totals(shared=shared).items()}
    finally:
        store.close()


def listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_estimate_calls_nothing_and_creates_nothing(srv, tmp_path):
    inp = write_prompts(tmp_path / "in.jsonl", PROMPTS)
    before = listing(tmp_path)
    figures = estimate(inp, *stub(srv), "--out", tmp_path / "run", "--cache", tmp_path / "cache.sqlite", "--rbr",
                       "--candidates", "2")
    assert srv.count() == 0
    assert listing(tmp_path) == before  # no run folder, no cache file
    assert figures["records"] == {"input": 5, "to_run": 5, "done": 0, "failed": 0}
    assert set(figures["roles"]) == {"generator", "critic", "reviser", "grader", "judge"}
    gen = figures["roles"]["generator"]
    assert gen["tokens_out_max"] == 16 * gen["calls"] and gen["expected"] is None
    assert gen["token_count"].startswith("estimate: characters / 4")
    human = cai("estimate", inp, *stub(srv), "--out", tmp_path / "run")
    assert human.exit_code == 0 and "no model was called" in human.stderr and "critic" in human.stderr
    assert human.stdout == "" and srv.count() == 0


@pytest.mark.parametrize("extra", [
    [],
    ["--rbr"],
    ["--rbr", "--grader-mode", "joint", "--rounds", "1"],
    ["--candidates", "3", "--rounds", "1"],
    ["--constitution", "model-spec", "--constitution", str(TEAM)],
], ids=["plain", "rbr", "rbr-joint", "candidates-3", "layered"])
def test_estimated_calls_are_the_calls_the_run_makes(srv, tmp_path, extra):
    inp = write_prompts(tmp_path / "in.jsonl", PROMPTS)
    args = [inp, *stub(srv), "--out", tmp_path / "run", *extra]
    figures = estimate(*args)
    assert srv.count() == 0
    r = cai("run", *args, "--quiet")
    assert r.exit_code == 0, r.stderr
    made = run_calls(tmp_path / "run")
    assert {role: f["calls"] for role, f in figures["roles"].items()} == made
    # The stub may have had more: a request a record repeats (the prompt's classification, graded after each
    # round) can be sent again before the store has committed the first answer.
    assert figures["total"]["calls"] == sum(made.values()) <= srv.count()


def test_a_half_done_run_is_estimated_for_what_is_left(srv, tmp_path):
    inp = write_prompts(tmp_path / "in.jsonl", PROMPTS)
    args = [inp, *stub(srv), "--out", tmp_path / "run", "--rbr", "--rounds", "1"]
    assert cai("run", *args, "--limit", "2", "--quiet").exit_code == 0
    first, before = srv.count(), listing(tmp_path)
    figures = estimate(*args)
    assert listing(tmp_path) == before  # the run's store read without a side file
    assert figures["records"] == {"input": 5, "to_run": 3, "done": 2, "failed": 0}
    assert any("3 of 5 are left" in n for n in figures["notes"])
    # the calls the two finished records made give the expected tokens per call
    assert figures["roles"]["critic"]["expected"]["from"] == "run"
    assert figures["total"]["expected"]["tokens_out"] <= figures["total"]["tokens_out_max"]
    assert srv.count() == first
    stored = sum(run_calls(tmp_path / "run").values())
    assert cai("run", *args, "--quiet").exit_code == 0
    assert figures["total"]["calls"] == sum(run_calls(tmp_path / "run").values()) - stored
    assert estimate(*args)["total"]["calls"] == 0


def test_a_run_stopped_mid_record_is_estimated_from_its_stored_steps(srv, tmp_path):
    """Held after some requests and interrupted, a record has some steps (and calls) stored: only the rest counts."""
    inp = write_prompts(tmp_path / "in.jsonl", PROMPTS)
    args = [inp, *stub(srv), "--out", tmp_path / "run", "--rbr", "--concurrency", "1"]
    srv.hold_after(23)
    proc = cai_proc_run(args)
    srv.wait_for_requests(24)
    proc.terminate()
    assert proc.wait(timeout=60) == 130
    srv.resume()
    srv.wait_idle()
    sent = srv.count()
    figures = estimate(*args)
    assert figures["records"]["to_run"] == 5  # the first record is half-done
    stored = sum(run_calls(tmp_path / "run").values())  # the held request was never answered
    assert 0 < stored < sent
    assert figures["total"]["calls"] == estimate(*args, "--restart")["total"]["calls"] - stored
    assert cai("run", *args, "--quiet").exit_code == 0
    assert figures["total"]["calls"] == sum(run_calls(tmp_path / "run").values()) - stored


def cai_proc_run(args: list[Any]) -> Any:
    from reliability import cai_proc, env

    return cai_proc("run", *args, "--quiet", env={**env(), "PYTHONPATH": os.pathsep.join(
        [str(REPO / "src"), os.environ.get("PYTHONPATH", "")])})


def test_the_cache_answers_drafts_and_gives_expected_tokens(srv, tmp_path):
    """A second run sharing a --cache takes the drafts it holds from it (the same prompts and generator): the
    estimate leaves them out, and takes its expected tokens per call from the cache; the file is left as it was."""
    inp = write_prompts(tmp_path / "in.jsonl", PROMPTS)
    cache = tmp_path / "cache.sqlite"
    assert cai("run", inp, *stub(srv), "--out", tmp_path / "a", "--cache", cache, "--quiet").exit_code == 0
    before, stamp = listing(tmp_path), cache.stat().st_mtime_ns
    args = [inp, *stub(srv), "--out", tmp_path / "b", "--cache", cache, "--constitution", "model-spec"]
    figures = estimate(*args)
    assert listing(tmp_path) == before and cache.stat().st_mtime_ns == stamp
    gen = figures["roles"]["generator"]
    assert gen["from_cache"] == 5 and gen["calls"] == 0
    assert figures["roles"]["critic"]["expected"]["from"] == "cache"
    assert cai("run", *args, "--quiet").exit_code == 0
    made = run_calls(tmp_path / "b")  # the calls it paid for: its drafts came from the cache
    assert "generator" not in made and figures["total"]["calls"] == sum(made.values())
    assert figures["total"]["from_cache"] == run_calls(tmp_path / "b", shared=True)["generator"] == 5


def test_the_library_estimates_in_memory_prompts(srv, tmp_path):
    figures = cai_lib.estimate(PROMPTS[:2], out=tmp_path / "nb", model="openai:gpt-4o-mini", rounds=1,
                               max_tokens=32)
    assert figures["records"]["to_run"] == 2 and figures["roles"]["critic"]["calls"] == 2
    cost = figures["total"]["cost"]
    assert 0 < cost["batch"] < cost["standard"] and cost["fewshot_0"] < cost["standard"]
    assert not (tmp_path / "nb").exists() and srv.count() == 0


def test_a_bad_input_line_is_one_line_naming_it(srv, tmp_path):
    inp = tmp_path / "in.jsonl"
    inp.write_text('{"prompt": "ok"}\n{"prompt": 3}\n')
    r = cai("estimate", inp, *stub(srv), "--out", tmp_path / "run")
    assert r.exit_code == 2
    assert f"{inp}:2:" in one_line_error(r.stderr)
    assert not (tmp_path / "run").exists()


def test_the_local_model_is_counted_with_its_own_tokenizer(tmp_path):
    pytest.importorskip("llama_cpp")
    inp = write_prompts(tmp_path / "in.jsonl", PROMPTS[:2])
    figures = estimate(inp, "--out", tmp_path / "run", "--rounds", "1", "--max-tokens", "32")
    assert figures["roles"]["generator"]["token_count"].startswith("exact")
    assert figures["total"]["cost"]["standard"] == 0.0
    assert not (tmp_path / "run").exists()
