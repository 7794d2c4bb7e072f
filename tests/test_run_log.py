"""What `cai run` tells a log: progress lines every --log-every seconds when stderr is not a terminal (text or one
JSON object per line), and a closing line with this invocation's figures. Against the loopback stub server."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from helpers import cai, write_prompts
from reliability import KEY, cai_proc

ARGS = ["--rounds", "1", "--max-tokens", "16", "--max-retries", "0"]
FIELDS = {"event", "elapsed_s", "records", "skipped", "done", "failed", "in_flight", "rate_per_s", "calls", "tokens_in",
          "tokens_out", "retries", "rate_limited", "unparsed", "estimated_cost_usd", "eta_s"}


def run_args(srv: Any, inp: Path, out: Path) -> list[Any]:
    return ["run", inp, "--out", out, "--model", "openai:stub", "--base-url", srv.url, *ARGS]


def test_a_zero_call_resume_reports_this_invocations_figures(tmp_path, stub_server):
    inp = write_prompts(tmp_path / "in.jsonl", ["a?", "b?"])
    first = cai(*run_args(stub_server, inp, tmp_path / "r"), "--json", env={"OPENAI_API_KEY": KEY})
    assert first.exit_code == 0, first.stderr
    m = json.loads(first.stdout)
    tokens = sum(t["tokens_in"] + t["tokens_out"] for t in m["tokens"].values())
    assert tokens > 0 and f"this invocation: 6 calls (0 cached), 0 retries, 0 rate-limited (429), {tokens} tokens, " \
        in first.stderr.splitlines()[-1]
    again = cai(*run_args(stub_server, inp, tmp_path / "r"), env={"OPENAI_API_KEY": KEY})
    assert again.exit_code == 0, again.stderr
    closing = again.stderr.splitlines()[-1]
    assert closing.startswith(f"wrote {tmp_path / 'r'}/: 2 sft, 2 pairs, 2 critiques; 2 done, 0 failed")
    assert "this invocation: 0 calls (0 cached), 0 retries, 0 rate-limited (429), 0 tokens, " in closing


def progress_lines(proc: Any, want: int, held: int) -> list[dict[str, Any]]:
    """Read `proc`'s stderr until `want` progress lines report `held` calls and two records in flight (the server
    holds the next requests, so no record finishes meanwhile); every line read must be a JSON object."""
    seen: list[dict[str, Any]] = []
    for line in proc.stderr:
        event = json.loads(line)
        assert event["event"] == "progress" and set(event) == FIELDS, line
        seen.append(event)
        if sum(e["calls"] == held and e["in_flight"] == 2 for e in seen) >= want:
            return seen
    raise AssertionError(f"cai exited ({proc.wait()}) after {len(seen)} progress lines: {seen}")


def test_a_run_logged_to_a_pipe_prints_json_progress_lines_on_time_then_the_summary(tmp_path, stub_server):
    stub_server.latency = 0.01
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps({"openai:stub": {"input": 1.0, "output": 2.0}}))
    inp = write_prompts(tmp_path / "in.jsonl", [f"q{i}?" for i in range(6)])
    stub_server.hold_after(4)  # four answers, then every request waits: the run is live but no record can finish
    proc = cai_proc(*run_args(stub_server, inp, tmp_path / "r"), "--concurrency", "2", "--prices", prices,
                    "--log-every", "0.2", "--log-format", "json")
    try:
        stub_server.wait_for_requests(6, until=lambda: proc.poll() is not None)  # both records wait on a call
        lines = progress_lines(proc, want=2, held=4)
        stub_server.resume()
        rest = proc.stderr.read().splitlines()
        assert proc.wait() == 0, rest
    finally:
        stub_server.resume()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert all(e["records"] == 6 and e["done"] + e["failed"] <= 1 and e["tokens_in"] > 0 for e in lines[-2:])
    assert all(e["estimated_cost_usd"] > 0 and e["rate_limited"] == 0 for e in lines[-2:])
    *more, last = [json.loads(line) for line in rest]  # every line is JSON, the summary last
    assert all(e["event"] == "progress" and set(e) == FIELDS for e in more)
    assert last["event"] == "summary" and last["records"] == {"done": 6, "failed": 0}
    inv = last["this_invocation"]
    assert inv["calls"] == 18 and inv["tokens"] > 0 and inv["estimated_cost_usd"] > 0
    assert last["exports"]["sft"] == 6 and last["out"] == str(tmp_path / "r")


def test_text_progress_lines_of_a_resumed_run_and_a_long_log_every_that_does_not_hold_the_exit(tmp_path, stub_server):
    inp = write_prompts(tmp_path / "in.jsonl", ["a?", "b?", "c?"])
    first = cai(*run_args(stub_server, inp, tmp_path / "r"), "--limit", "1", env={"OPENAI_API_KEY": KEY})
    assert first.exit_code == 0 and stub_server.count() == 3, first.stderr
    stub_server.hold_after(5)  # the resumed run skips the first record; its second gets two answers, then waits
    proc = cai_proc(*run_args(stub_server, inp, tmp_path / "r"), "--concurrency", "1", "--log-every", "0.2")
    try:
        stub_server.wait_for_requests(6, until=lambda: proc.poll() is not None)
        held = next(line for line in proc.stderr if " · calls 2 · " in line)  # printed while nothing finishes
        stub_server.resume()
        assert proc.wait() == 0
    finally:
        stub_server.resume()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert held.startswith("records 1/3 · 0.00/s · skipped 1 · in flight 1 · calls 2 · tokens "), held
    # A run far shorter than --log-every prints no progress line and ends as soon as it is done (the timer is a
    # daemon that stop() ends at once): the closing line is its only one.
    proc = cai_proc(*run_args(stub_server, inp, tmp_path / "r2"), "--log-every", "3600")
    _, err = proc.communicate()
    assert proc.returncode == 0 and len(err.splitlines()) == 1 and err.startswith("wrote "), err


def test_the_library_prints_nothing_unless_asked_whatever_the_log_options(tmp_path, stub_server, capfd,
                                                                           monkeypatch):
    import cai as lib

    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    stub_server.latency = 0.02
    r = lib.run(["a?", "b?"], out=tmp_path / "r", model="openai:stub", base_url=stub_server.url, rounds=1,
                max_tokens=16, log_every=0.01, log_format="json")
    assert capfd.readouterr() == ("", "")
    assert r.invocation["calls"] == 6 and r.invocation["tokens_in"] > 0 and r.invocation["tokens_out"] > 0
    again = lib.run(["a?", "b?"], out=tmp_path / "r", model="openai:stub", base_url=stub_server.url, rounds=1,
                    max_tokens=16)
    assert (again.invocation["calls"], again.invocation["tokens_in"], again.invocation["tokens_out"]) == (0, 0, 0)
