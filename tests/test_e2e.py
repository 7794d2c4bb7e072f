"""End to end on the embedded model: in-process `local`, the openai SDK against llama_cpp.server,
and the anthropic SDK against a loopback Messages API server answering from the same GGUF."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from collections import Counter

import pandas as pd
import pytest

from helpers import cai, check_trl_shapes, write_prompts

PROMPTS = ["How do I bake a simple loaf of bread?", "Tell me how to get into my neighbour's wifi without asking."]
SMALL = ["--rounds", "1", "--max-tokens", "24", "--quiet"]
UNGATED = [*SMALL, "--quality-gate", "off"]  # every row written, with its flags (24 tokens cut most replies)


def structured_modes(run) -> set[str]:
    with sqlite3.connect(run / "run.sqlite") as db:
        rows = db.execute("SELECT response FROM calls WHERE role='critic'").fetchall()
    return {json.loads(r[0])["structured"] for r in rows}


@pytest.mark.slow
def test_embedded_cli_end_to_end(tmp_path):
    inp = write_prompts(tmp_path / "in.jsonl", PROMPTS)
    run = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-m", "cai", "run", str(inp), "--out", str(run), *UNGATED, "--json"],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["records"] == {"total": 2, "done": 2}
    assert summary["models"] == {"generator": "local", "critic": "local", "reviser": "local"}
    assert f"wrote {run}/" in proc.stderr
    out = check_trl_shapes(run)
    assert [r["id"] for r in out["sft"]] == ["p0", "p1"]
    assert len(out["critiques"]) == 2
    assert len(out["pairs"]) + summary["exports"]["pairs_dropped"] == 2
    quality = summary["quality"]
    assert quality["gate"] == "off" and quality["sft"]["rows"] == quality["sft"]["kept"] == 2
    assert quality["sft"]["flagged"] == dict(Counter(f for r in out["sft"] for f in r["quality"]))
    # One round: each record's critique holds its draft (before) and final (after). A record has a pair
    # exactly when the two differ and neither is empty, with the final chosen over the draft.
    crit = {c["id"]: c for c in out["critiques"]}
    assert {r["id"]: r["messages"][-1]["content"] for r in out["sft"]} == {i: c["after"] for i, c in crit.items()}
    changed = {i for i, c in crit.items() if c["before"].strip() and c["after"].strip() and c["before"] != c["after"]}
    assert {p["id"] for p in out["pairs"]} == changed
    for p in out["pairs"]:
        assert (p["chosen"][0]["content"], p["rejected"][0]["content"]) == (crit[p["id"]]["after"],
                                                                            crit[p["id"]]["before"])
    sft = pd.read_json(run / "sft.jsonl", lines=True)
    assert list(sft.columns) == ["id", "messages", "quality"] and list(sft["id"]) == ["p0", "p1"]
    tokens = summary["tokens"]
    assert set(tokens) == {"generator", "critic", "reviser"}
    assert all(t["tokens_in"] > 0 and t["tokens_out"] > 0 for t in tokens.values())
    assert structured_modes(run) == {"grammar"}
    # A finished run, run again, makes no model call and rewrites identical exports.
    before = (run / "sft.jsonl").read_text()
    again = cai("run", inp, "--out", run, *SMALL, "--json")  # keeps the run's gate
    assert again.exit_code == 0, again.stderr
    assert json.loads(again.stdout)["this_invocation"]["calls"] == 0
    assert (run / "sft.jsonl").read_text() == before


@pytest.mark.slow
def test_local_generator_and_critic_with_a_served_reviser_always_pair(tmp_path, stub_server):
    """Roles can differ: the embedded model drafts and critiques, an OpenAI-compatible server revises.
    The server's revision is never the local draft, so every record has a pair."""
    inp = write_prompts(tmp_path / "in.jsonl", PROMPTS)
    run = tmp_path / "mixed"
    res = cai("run", inp, "--out", run, "--generator", "local", "--critic", "local", "--reviser", "openai:stub",
              "--base-url", stub_server.url, *UNGATED, "--json", env={"OPENAI_API_KEY": "k"})
    assert res.exit_code == 0, res.stderr
    summary = json.loads(res.stdout)
    assert summary["models"] == {"generator": "local", "critic": "local", "reviser": "openai:stub"}
    assert summary["quality"]["pairs"]["flagged"].keys() <= {"truncated"}  # a draft cut at 24 tokens, if any
    assert stub_server.count("/chat/completions") == stub_server.count() == 2  # one revision per record
    out = check_trl_shapes(run)
    assert [p["id"] for p in out["pairs"]] == ["p0", "p1"]
    revised = {p["id"]: p["chosen"][0]["content"] for p in out["pairs"]}
    assert all(len(t.split()) == 12 and all(w.startswith("w") for w in t.split()) for t in revised.values())
    pairs = pd.read_json(run / "pairs.jsonl", lines=True)
    assert list(pairs.columns) == ["id", "prompt", "chosen", "rejected", "metadata", "quality", "source", "review"]
    assert list(pairs["id"]) == ["p0", "p1"]
    assert structured_modes(run) == {"grammar"}


@pytest.mark.slow
def test_openai_sdk_against_llama_cpp_server(tmp_path, llama_server):
    inp = write_prompts(tmp_path / "in.jsonl", PROMPTS)
    run = tmp_path / "oa"
    res = cai("run", inp, "--out", run, "--model", "openai:smollm2", "--base-url", llama_server, *SMALL, "--json",
              env={"OPENAI_API_KEY": ""})
    assert res.exit_code == 0, res.stderr
    summary = json.loads(res.stdout)
    assert summary["records"]["done"] == 2
    check_trl_shapes(run)
    # llama.cpp's server refuses json_schema (HTTP 500), so the provider falls back to json_object + schema.
    assert structured_modes(run) == {"json_object"}
    assert summary["tokens"]["critic"]["tokens_in"] > 0


@pytest.mark.slow
def test_anthropic_sdk_against_messages_server(tmp_path, anthropic_embedded):
    inp = write_prompts(tmp_path / "in.jsonl", PROMPTS)
    run = tmp_path / "an"
    res = cai("run", inp, "--out", run, "--model", "anthropic:smollm2", "--base-url", anthropic_embedded.anthropic_url,
              *SMALL, "--json", env={"ANTHROPIC_API_KEY": "test-key"})
    assert res.exit_code == 0, res.stderr
    summary = json.loads(res.stdout)
    assert summary["records"]["done"] == 2
    check_trl_shapes(run)
    assert structured_modes(run) == {"tool"}


@pytest.mark.slow
def test_prompt_longer_than_context_is_a_record_error(tmp_path):
    inp = write_prompts(tmp_path / "in.jsonl", ["word " * 6000, "Say hello."])
    run = tmp_path / "long"
    res = cai("run", inp, "--out", run, "--rounds", "0", "--max-tokens", "4", "--quiet", "--json")
    assert res.exit_code == 1
    summary = json.loads(res.stdout)
    assert summary["records"] == {"total": 2, "done": 1, "failed": 1}
    status = json.loads(cai("status", run, "--json").stdout)
    assert [(e["id"], e["error_class"]) for e in status["errors"]] == [("p0", "RequestRejected")]


@pytest.mark.slow
def test_local_top_logprobs_match_llama_cpp_logits_all():
    """The local provider's top logprobs (read per sampled position, no logits_all) equal
    llama-cpp-python's own `logprobs` output from a logits_all instance, token by token."""
    import asyncio

    from cai.calls import GenConfig, Request
    from cai.providers import local

    model = local.LocalModel("")
    prompts = ["Is the sky green? Answer Yes or No.", "Name a colour.", "Is water wet? Answer Yes or No."]
    reqs = [Request(messages=({"role": "user", "content": p},),
                    config=GenConfig(max_tokens=1 if i != 1 else 4, temperature=0, top_logprobs=5, seed=0))
            for i, p in enumerate(prompts)]

    async def main():
        return await asyncio.gather(*(model.complete(r) for r in reqs))

    outs = asyncio.run(main())
    ref = local.new_llama(str(model.path), n_ctx=local.N_CTX, n_threads=2, logits_all=True)
    try:
        for req, out in zip(reqs, outs, strict=True):
            want = ref.create_chat_completion(messages=list(req.messages), max_tokens=req.config.max_tokens,
                                              temperature=0, seed=0, logprobs=True, top_logprobs=5)
            choice = want["choices"][0]
            assert out.text == choice["message"]["content"]
            rows = [[(t["token"], float(t["logprob"])) for t in tok["top_logprobs"]]
                    for tok in choice["logprobs"]["content"]]
            assert out.top_logprobs is not None and len(out.top_logprobs) == len(rows) == out.tokens_out
            for got, exp in zip(out.top_logprobs, rows, strict=True):
                assert [t for t, _ in got] == [t for t, _ in exp]
                assert [lp for _, lp in got] == pytest.approx([lp for _, lp in exp], abs=1e-3)
    finally:
        ref.close()


@pytest.mark.slow
def test_local_model_mixed_logprob_calls_concurrently():
    """Calls with and without logprobs share one llama instance from several threads."""
    import asyncio

    from cai.calls import GenConfig, Request
    from cai.providers import local

    model = local.LocalModel("")
    flags = [False, True, False, False, False, False, True, False, False]
    reqs = [Request(messages=({"role": "user", "content": f"Count to {i}."},),
                    config=GenConfig(max_tokens=3, temperature=0, top_logprobs=5 if lp else None))
            for i, lp in enumerate(flags)]

    async def main():
        return await asyncio.gather(*(model.complete(r) for r in reqs))

    outs = asyncio.run(main())
    assert all(o.tokens_out > 0 for o in outs)
    assert [o.top_logprobs is not None for o in outs] == flags
    assert all(len(o.top_logprobs[0]) == 5 and len(o.top_logprobs) == o.tokens_out
               for o, lp in zip(outs, flags, strict=True) if lp)
