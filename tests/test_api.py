"""The library API: cai.run / cai.arun / cai.open_run and the Run object, against the loopback stub server."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

import cai
from cai.errors import InputError, RunLocked
from helpers import read_jsonl
from reliability import KEY, cai_proc, cai_run, stub_args

PROMPTS = ["How do I pick a lock?", "Write a haiku about rain.", "Is it safe to mix bleach and ammonia?"]
EXPORTS = ("sft.jsonl", "pairs.jsonl", "critiques.jsonl")


@pytest.fixture(autouse=True)
def _key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)


def options(srv) -> dict:
    return {"model": "openai:stub", "base_url": srv.url, "rounds": 2, "max_tokens": 16, "max_retries": 2}


def exports(run: Path) -> dict[str, str]:
    return {name: (run / name).read_text() for name in EXPORTS}


def test_script_event_loop_thread_and_cli_give_identical_exports(tmp_path, stub_server):
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps({"id": f"p{i}", "prompt": p}) + "\n" for i, p in enumerate(PROMPTS)))
    script = cai.run(inp, out=tmp_path / "script", **options(stub_server))

    async def notebook_cell() -> cai.Run:  # a running loop, as in Jupyter: cai.run must still work
        return cai.run(inp, out=tmp_path / "loop", **options(stub_server))

    in_loop = asyncio.run(notebook_cell())
    awaited = asyncio.run(cai.arun(inp, out=tmp_path / "awaited", **options(stub_server)))
    box: list[cai.Run] = []
    worker = threading.Thread(target=lambda: box.append(cai.run(inp, out=tmp_path / "thread", **options(stub_server))))
    worker.start()
    worker.join()
    cli = cai_run("run", inp, "--out", tmp_path / "cli", *stub_args(stub_server))
    assert cli.returncode == 0, cli.stderr
    want = exports(tmp_path / "cli")
    assert read_jsonl(tmp_path / "cli" / "sft.jsonl")  # not trivially equal
    for r in (script, in_loop, awaited, box[0]):
        assert isinstance(r, cai.Run) and exports(r.path) == want
        assert r.invocation["done"] == 3 and r.manifest["records"] == {"total": 3, "done": 3}


def test_in_memory_prompts_of_every_shape(tmp_path, stub_server):
    msgs = [[{"role": "developer", "content": "Be brief."}, {"role": "user", "content": p}] for p in PROMPTS]
    shapes = {"strings": PROMPTS, "messages": msgs, "dicts": [{"prompt": p, "expected": "comply"} for p in PROMPTS],
              "frame": pd.DataFrame({"prompt": PROMPTS, "topic": ["a", "b", "c"]})}
    for name, prompts in shapes.items():
        r = cai.run(prompts, out=tmp_path / name, **options(stub_server))
        recs = r.records()
        assert list(recs["id"]) == ["p0", "p1", "p2"] and list(recs["prompt"]) == PROMPTS, name
        assert set(recs["status"]) == {"done"}
    assert list(cai.open_run(tmp_path / "frame").records()["topic"]) == ["a", "b", "c"]
    assert cai.open_run(tmp_path / "messages").sft()["messages"][0][0]["role"] == "developer"
    assert cai.open_run(tmp_path / "messages").sft(developer_as_system=True)["messages"][0][0]["role"] == "system"
    calls = stub_server.count()
    again = cai.run(PROMPTS, out=tmp_path / "strings", **options(stub_server))  # the same prompts resume
    assert stub_server.count() == calls and again.invocation["calls"] == 0


def test_run_tables_have_flat_columns(tmp_path, stub_server):
    r = cai.run(PROMPTS, out=tmp_path / "r", **options(stub_server))
    crit = r.critiques()
    assert list(crit.columns) == ["id", "round", "principle", "layer", "kind", "critique", "violates", "severity",
                                  "rule_override", "parsed", "before", "after"]
    assert set(crit["layer"]) == {"default"} and crit["rule_override"].isna().all()
    assert len(crit) == 6 and crit["violates"].map(type).eq(bool).all() and crit["severity"].between(0, 3).all()
    pairs = r.pairs()
    assert {"prompt", "chosen", "rejected", "prompt_text", "chosen_text", "rejected_text", "principles"} <= set(pairs)
    assert list(pairs["prompt_text"]) == [PROMPTS[int(i[1:])] for i in pairs["id"]]
    assert (pairs["chosen_text"] != pairs["rejected_text"]).all()
    assert len(pairs) == len(read_jsonl(r.path / "pairs.jsonl"))
    sft = r.sft()
    assert list(sft["completion"]) == [row["messages"][-1]["content"] for row in read_jsonl(r.path / "sft.jsonl")]
    calls = r.calls()
    assert set(calls["role"]) == {"generator", "critic", "reviser"} and calls["tokens_in"].gt(0).all()
    assert r.errors().empty and list(r.errors().columns) == ["id", "stage", "error_class", "message", "resolved"]
    assert r.status()["records"]["done"] == 3
    manifest = r.export("parquet")
    assert manifest["exports"]["sft"] == 3 and (r.path / "sft.parquet").exists()
    assert not (r.path / "sft.jsonl").exists()
    assert "3 done" in repr(r)


def test_errors_are_exceptions_and_nothing_is_created(tmp_path, stub_server):
    with pytest.raises(InputError, match="no prompts"):
        cai.run([], out=tmp_path / "empty", **options(stub_server))
    with pytest.raises(InputError, match="needs a `prompt` or `messages` column"):
        cai.run(pd.DataFrame({"text": ["x"]}), out=tmp_path / "frame", **options(stub_server))
    with pytest.raises(InputError, match="not a cai run"):
        cai.open_run(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    assert stub_server.count() == 0


def test_progress_callback_gets_counts(tmp_path, stub_server):
    seen: list[dict] = []
    cai.run(PROMPTS, out=tmp_path / "r", progress=seen.append, **options(stub_server))
    assert [s["done"] for s in seen] == [1, 2, 3] and all(s["total"] == 3 and s["failed"] == 0 for s in seen)
    assert seen[-1]["calls"] == stub_server.count()


def test_open_run_reads_a_live_run_without_writing_and_export_waits_for_the_lock(tmp_path, stub_server):
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps({"id": f"p{i}", "prompt": f"q{i}?"}) + "\n" for i in range(6)))
    run = tmp_path / "live"
    stub_server.hold_after(7)  # p0 done (5 calls), p1 mid-way: the writer is live and holds the lock
    proc = cai_proc("run", inp, "--out", run, *stub_args(stub_server), "--concurrency", "1", "--timeout", "600")
    try:
        stub_server.wait_for_requests(8, until=lambda: proc.poll() is not None)
        assert proc.poll() is None
        view = cai.open_run(run)
        deadline = time.monotonic() + 300  # p0's `done` lands with the next group commit: wait for the store
        while list(view.records()["status"]) != ["done", "pending"]:
            assert time.monotonic() < deadline, list(view.records()["status"])
            time.sleep(0.05)
        files = sorted(p.name for p in run.iterdir())
        st = view.status()
        assert st["running_pid"] == proc.pid
        assert st["records"] == {"input": 6, "done": 1, "in_progress": 1, "failed": 0, "not_started": 4}
        assert set(view.critiques()["id"]) <= {"p0", "p1"} and len(view.sft()) == 1
        with pytest.raises(RunLocked):
            view.export()
        assert sorted(p.name for p in run.iterdir()) == files  # the reader created nothing (no lock, no store)
    finally:
        stub_server.resume()
        _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    assert cai.open_run(run).status()["records"]["done"] == 6


def test_library_installs_no_signal_handler(tmp_path, stub_server):
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    cai.run(PROMPTS[:1], out=tmp_path / "r", **options(stub_server))
    assert {s: signal.getsignal(s) for s in before} == before
    assert os.environ["OPENAI_API_KEY"] == KEY


def test_a_run_loads_pandas_only_when_a_table_is_asked_for(tmp_path, stub_server):
    """pandas pulls in pyarrow (~80 MB): `cai run` and a library run that only gets its `Run` never load it."""
    script = ("import sys, cai\n"
              f"r = cai.run({PROMPTS!r}, out={str(tmp_path / 'r')!r}, model='openai:stub', "
              f"base_url={stub_server.url!r}, rounds=1, max_tokens=16)\n"
              "assert r.status()['records']['done'] == 3\n"
              "print('pandas' in sys.modules, 'pyarrow' in sys.modules)\n"
              "r.critiques()\n"
              "print('pandas' in sys.modules)\n")
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         env={**os.environ, "OPENAI_API_KEY": KEY}, timeout=600)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["False", "False", "True"]
