"""The run store: resume, zero calls on re-run, config mismatch, foreign --out, kill -9 at random moments."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

from helpers import cai, read_jsonl, write_prompts

ARGS = ["--rounds", "2", "--max-tokens", "16", "--quiet", "--max-retries", "2"]


def run(srv, inp, out, *extra):
    return cai("run", inp, "--out", out, "--model", "openai:stub", "--base-url", srv.url, *ARGS, *extra,
               env={"OPENAI_API_KEY": "k"})


def test_rerun_of_finished_run_makes_zero_calls(tmp_path, stub_server):
    inp = write_prompts(tmp_path / "in.jsonl", ["a?", "b?", "c?"])
    assert run(stub_server, inp, tmp_path / "r").exit_code == 0
    sent = stub_server.count()
    assert sent == 3 * 5
    res = run(stub_server, inp, tmp_path / "r", "--json")
    assert res.exit_code == 0
    assert stub_server.count() == sent
    summary = json.loads(res.stdout)
    assert summary["this_invocation"]["calls"] == 0 and summary["this_invocation"]["skipped"] == 3


def test_larger_limit_continues_and_cache_reuses(tmp_path, stub_server):
    inp = write_prompts(tmp_path / "in.jsonl", ["a?", "b?", "c?", "d?"])
    assert run(stub_server, inp, tmp_path / "r", "--limit", "2").exit_code == 0
    assert stub_server.count() == 10
    assert run(stub_server, inp, tmp_path / "r").exit_code == 0
    assert stub_server.count() == 20
    assert [r["id"] for r in read_jsonl(tmp_path / "r" / "sft.jsonl")] == ["p0", "p1", "p2", "p3"]


def test_changed_config_is_refused_then_restart_moves_aside(tmp_path, stub_server):
    inp = write_prompts(tmp_path / "in.jsonl", ["a?"])
    out = tmp_path / "r"
    assert run(stub_server, inp, out).exit_code == 0
    res = run(stub_server, inp, out, "--constitution", "model-spec")
    assert res.exit_code == 2
    assert "constitution_sha256" in res.stderr and str(out) in res.stderr
    res = cai("run", inp, "--out", out, "--model", "openai:stub", "--base-url", stub_server.url, "--rounds", "1",
              "--max-tokens", "16", "--quiet", env={"OPENAI_API_KEY": "k"})
    assert res.exit_code == 2 and "rounds" in res.stderr
    assert (out / "sft.jsonl").is_file()  # nothing already written is lost
    res = run(stub_server, inp, out, "--constitution", "model-spec", "--restart")
    assert res.exit_code == 0, res.stderr
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("r.old-")]
    assert len(aside) == 1 and (aside[0] / "run.sqlite").is_file() and (aside[0] / "sft.jsonl").is_file()


def test_foreign_out_dir_is_refused(tmp_path, stub_server):
    inp = write_prompts(tmp_path / "in.jsonl", ["a?"])
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("precious")
    res = run(stub_server, inp, out)
    assert res.exit_code == 2 and "not a cai run" in res.stderr
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    assert stub_server.count() == 0


def test_bad_input_exits_2_before_any_call(tmp_path, stub_server):
    inp = tmp_path / "bad.jsonl"
    inp.write_text('{"prompt": "fine"}\n{"prompt": ""}\n')
    res = run(stub_server, inp, tmp_path / "r")
    assert res.exit_code == 2
    assert res.stderr.strip().splitlines() == [f"error: {inp}:2: empty prompt"]
    assert stub_server.count() == 0 and not (tmp_path / "r").exists()
    bad_yaml = tmp_path / "c.yaml"
    bad_yaml.write_text("name: c\nprinciples:\n  - id: a\n    critique: 'unterminated\n")
    ok = write_prompts(tmp_path / "ok.jsonl", ["a?"])
    res = run(stub_server, ok, tmp_path / "r", "--constitution", str(bad_yaml))
    assert res.exit_code == 2 and f"{bad_yaml}:" in res.stderr and "invalid YAML" in res.stderr
    res = run(stub_server, tmp_path / "ok.jsonl", tmp_path / "r", "--constitution", "nope")
    assert res.exit_code == 2 and "unknown constitution 'nope'" in res.stderr


def test_parquet_export_and_rebuild(tmp_path, stub_server):
    import pandas as pd

    inp = write_prompts(tmp_path / "in.jsonl", ["a?", "b?"])
    out = tmp_path / "r"
    assert run(stub_server, inp, out, "--format", "parquet").exit_code == 0
    frame = pd.read_parquet(out / "pairs.parquet")
    assert list(frame["id"]) == ["p0", "p1"]
    assert list(frame["prompt"][1]) == [{"role": "user", "content": "b?"}]  # nested columns, not JSON text
    assert [m["role"] for m in frame["chosen"][0]] == ["assistant"] == [m["role"] for m in frame["rejected"][0]]
    assert not any(out.glob("*.jsonl"))
    res = cai("export", out)
    assert res.exit_code == 0
    assert [r["id"] for r in read_jsonl(out / "sft.jsonl")] == ["p0", "p1"]
    assert not any(out.glob("*.parquet"))  # the other format's files are gone once the new ones are in place


def reply_for(body: dict) -> str:
    """The server's reply is a function of the request, so a reply names its request."""
    digest = hashlib.sha256(json.dumps(body["messages"], sort_keys=True).encode()).hexdigest()[:16]
    if "response_format" in body:
        return json.dumps({"critique": f"c-{digest}", "violates": True, "severity": 1})
    return f"r-{digest}"


def committed_replies(out: Path) -> set[str]:
    if not (out / "run.sqlite").exists():
        return set()
    with sqlite3.connect(out / "run.sqlite") as db:
        return {json.loads(r[0])["text"] for r in db.execute("SELECT response FROM calls")}


def received_from(srv, n: int, proc: subprocess.Popen) -> None:
    """Wait until the stub server has received `n` requests in all; fail clearly if `proc` exits first
    (the deadline of `wait_for_requests`, 300 s, only ever ends a broken run)."""
    got = srv.wait_for_requests(n, until=lambda: proc.poll() is not None)
    if got < n:
        err = proc.stderr.read() if proc.stderr else ""
        err = err.decode() if isinstance(err, bytes) else err
        raise AssertionError(f"cai exited with {proc.returncode} after the server saw {got} of {n} requests:\n{err}")


def test_kill_9_at_random_moments_then_resume(tmp_path, stub_server):
    stub_server.latency = 0.05
    stub_server.reply_fn = lambda kind, body: reply_for(body)
    inp = write_prompts(tmp_path / "in.jsonl", [f"prompt {i}?" for i in range(100)])  # 500 calls in all
    base = [sys.executable, "-m", "cai", "run", str(inp), "--model", "openai:stub", "--base-url", stub_server.url,
            *ARGS, "--concurrency", "4"]
    env = {**os.environ, "OPENAI_API_KEY": "k"}
    out = tmp_path / "killed"
    rng = random.Random(1234)
    kills = 0
    seen = 0
    for attempt in range(6):  # five runs killed mid-way, then one that finishes
        already = committed_replies(out)
        kill = attempt < 5
        if kill:
            # The kill lands once this run has had k answers (k seeded) and sent one more request. Requests
            # past the k-th are held unanswered, so the run cannot finish first: it answers at most 5 × 60 of
            # the 500 calls before the last kill.
            k = rng.randint(1, 60)
            stub_server.hold_after(seen + k)
        proc = subprocess.Popen([*base, "--out", str(out)], env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        try:
            if kill:
                received_from(stub_server, seen + k + 1, proc)
                assert proc.poll() is None, "the run ended although its requests were held"
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                kills += 1
            else:
                _, err = proc.communicate(timeout=300)
                assert proc.returncode == 0, err.decode()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stderr.close()
            stub_server.resume()
        stub_server.wait_idle()  # every byte the killed run sent has been read and counted
        new = stub_server.requests[seen:]
        seen += len(new)
        whole = [r for r in new if isinstance(r["body"], dict) and "messages" in r["body"]]
        # Only a client killed while sending leaves a request the server cannot read.
        assert len(new) - len(whole) <= 4
        # No request was sent whose answer had already been committed.
        resent = [r for r in whole if reply_for(r["body"]) in already]
        assert resent == []
    assert kills == 5 and proc.returncode == 0
    sft = read_jsonl(out / "sft.jsonl")
    assert [r["id"] for r in sft] == [f"p{i}" for i in range(100)]  # each once, in input order
    # The exports equal those of an uninterrupted run.
    clean = tmp_path / "clean"
    subprocess.run([*base, "--out", str(clean)], env=env, check=True, capture_output=True)
    for name in ("sft.jsonl", "pairs.jsonl", "critiques.jsonl"):
        assert (out / name).read_text() == (clean / name).read_text(), name


def test_sigterm_and_sigint_exit_130_with_resume_command(tmp_path, stub_server):
    inp = write_prompts(tmp_path / "in.jsonl", [f"prompt {i}?" for i in range(30)])
    out = tmp_path / "r"
    cmd = [sys.executable, "-m", "cai", "run", str(inp), "--out", str(out), "--model", "openai:stub",
           "--base-url", stub_server.url, *ARGS, "--concurrency", "2"]
    env = {**os.environ, "OPENAI_API_KEY": "k"}
    for sig in (signal.SIGTERM, signal.SIGINT):
        before = stub_server.count()
        # Four answers, then every request is held: the signal comes only once the run is live (it has sent
        # a request, so its handlers are installed) and it cannot have finished.
        stub_server.hold_after(before + 4)
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            received_from(stub_server, before + 5, proc)
            proc.send_signal(sig)
            _, err = proc.communicate(timeout=300)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
            stub_server.resume()
        stub_server.wait_idle()  # the next run's requests are counted from here
        assert proc.returncode == 130, err
        assert "Resume with:" in err and f"--out {out}" in err
        assert not list(out.glob(".*.tmp"))  # no half-written export left behind
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert [r["id"] for r in read_jsonl(out / "sft.jsonl")] == [f"p{i}" for i in range(30)]


def test_a_resumed_run_keeps_its_export_format_unless_format_is_given(tmp_path, stub_server):
    inp = write_prompts(tmp_path / "in.jsonl", ["a?", "b?"])
    out = tmp_path / "r"

    def exports() -> list[str]:
        return sorted(p.name for p in out.iterdir() if p.suffix in (".jsonl", ".parquet"))

    assert run(stub_server, inp, out, "--format", "parquet").exit_code == 0
    parquet = ["critiques.parquet", "pairs.parquet", "sft.parquet"]
    assert exports() == parquet
    again = run(stub_server, inp, out, "--json")  # a plain re-run: the run's own format
    assert again.exit_code == 0, again.stderr
    assert exports() == parquet and json.loads(again.stdout)["settings"]["export"]["format"] == "parquet"
    assert run(stub_server, inp, out, "--format", "jsonl").exit_code == 0  # given: it switches
    assert exports() == ["critiques.jsonl", "pairs.jsonl", "sft.jsonl"]
    assert run(stub_server, inp, out).exit_code == 0  # and the run keeps the new one
    assert exports() == ["critiques.jsonl", "pairs.jsonl", "sft.jsonl"]
