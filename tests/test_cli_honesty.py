"""No tracebacks and honest status: one line and a documented exit code for every failure a user can cause,
counts that add up, commands that copy-paste, and a manifest that says what happened."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess

import pytest

from cai.read.cmdline import resume_command, retry_command
from conftest import free_port
from helpers import cai, read_jsonl, write_prompts
from reliability import KEY, assert_complete, cai_proc, cai_run, kill_while_live, one_line_error, stub_args


def test_empty_input_exits_2_before_a_folder_or_call(tmp_path, stub_server):
    for content in ("", "\n  \n\n"):
        inp = tmp_path / "in.jsonl"
        inp.write_text(content)
        res = cai_run("run", inp, "--out", tmp_path / "r", *stub_args(stub_server))
        assert res.returncode == 2 and one_line_error(res.stderr) == f"error: {inp}: no prompts"
    assert not (tmp_path / "r").exists() and stub_server.count() == 0


def test_missing_key_malformed_prices_and_dotted_out_fail_before_anything_is_made(tmp_path, stub_server):
    inp = write_prompts(tmp_path / "in.jsonl", ["hi?"])
    no_key = {k: v for k, v in os.environ.items() if k != "ANTHROPIC_API_KEY"}
    res = cai_run("run", inp, "--out", tmp_path / "k", "--model", "anthropic:claude", env=no_key)
    assert res.returncode == 2 and "ANTHROPIC_API_KEY is not set" in one_line_error(res.stderr)
    assert not (tmp_path / "k").exists()
    prices = tmp_path / "prices.json"
    prices.write_text('{"openai:*": {"input": "cheap", "output": 1}}')
    res = cai_run("run", inp, "--out", tmp_path / "p", *stub_args(stub_server), "--prices", prices)
    assert res.returncode == 2 and str(prices) in one_line_error(res.stderr)
    assert not (tmp_path / "p").exists() and stub_server.count() == 0
    res = cai_run("run", inp, "--out", tmp_path / "a" / ".." / "b", *stub_args(stub_server))
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "b" / "sft.jsonl").exists() and not (tmp_path / "a").exists()


def test_dead_endpoint_stops_early_with_exit_4(tmp_path):
    inp = write_prompts(tmp_path / "in.jsonl", [f"q{i}?" for i in range(20)])
    url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    res = cai_run("run", inp, "--out", tmp_path / "r", "--model", "openai:m", "--base-url", url,
                  "--max-retries", "1", "--quiet")
    assert res.returncode == 4
    line = one_line_error(res.stderr)
    assert "openai:m is unusable" in line and "is the server running" in line
    assert assert_complete(tmp_path / "r").get("q0", "failed") != "done"


def test_model_not_found_stops_early_with_exit_4(tmp_path, stub_server):
    inp = write_prompts(tmp_path / "in.jsonl", [f"q{i}?" for i in range(20)])
    stub_server.add_fault("404", times=1000)
    res = cai_run("run", inp, "--out", tmp_path / "r", *stub_args(stub_server), "--concurrency", "2")
    assert res.returncode == 4 and "check the model name" in one_line_error(res.stderr)
    assert stub_server.count() <= 2  # one per worker in flight, not one per record


def test_interrupt_message_once_with_a_runnable_resume_command(tmp_path, stub_server):
    inp = write_prompts(tmp_path / "in.jsonl", [f"q{i}?" for i in range(8)])
    run = tmp_path / "r"
    stub_server.hold_after(3)
    proc = cai_proc("run", inp, "--out", run, *stub_args(stub_server), "--restart")
    stub_server.wait_for_requests(4, until=lambda: proc.poll() is not None)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=600)
    stub_server.resume()
    assert proc.returncode == 130, err
    assert err.count("interrupted") == 1 and "Traceback" not in err
    resume = err.split("Resume with:\n", 1)[1].strip().splitlines()[0]
    args = shlex.split(resume)
    assert args[0] == "cai" and "--restart" not in args
    done = cai_run(*args[1:])
    assert done.returncode == 0, done.stderr
    assert [r["id"] for r in read_jsonl(run / "sft.jsonl")] == [f"p{i}" for i in range(8)]


def test_status_counts_add_up_resolve_errors_and_print_runnable_commands(tmp_path, stub_server):
    long_out = tmp_path / ("run-with-a-long-name-" + "x" * 120)
    inp = write_prompts(tmp_path / "in.jsonl", [f"q{i}?" for i in range(6)])
    # p1's draft fails for good (400), so the first invocation ends with one failed record.
    stub_server.add_fault("400", times=1, when=lambda path, body: "q1?" in json.dumps(body))
    res = cai_run("run", inp, "--out", long_out, *stub_args(stub_server), "--limit", "4")
    assert res.returncode == 1, res.stderr
    retry = [ln.strip() for ln in res.stderr.splitlines() if ln.strip().startswith("cai run")]
    assert len(retry) == 1 and str(long_out) in retry[0]  # one unwrapped line, as typed
    assert retry[0].count("--retry-failed") == 1
    st = cai("status", long_out, "--json")
    assert st.exit_code == 1  # records failed
    info = json.loads(st.stdout)
    c = info["records"]
    assert c == {"input": 4, "done": 3, "in_progress": 0, "failed": 1, "not_started": 0}
    assert [e["id"] for e in info["errors"]] == ["p1"] and info["errors_open"] == 1
    # The printed retry command runs as is, and the record's error row is then marked resolved.
    again = subprocess.run(["sh", "-c", info["retry_failed"].replace("cai run", "python -m cai run", 1)],
                           env={**os.environ, "OPENAI_API_KEY": KEY}, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    st = cai("status", long_out, "--json")
    info = json.loads(st.stdout)
    assert st.exit_code == 0 and info["records"]["failed"] == 0 and info["errors_open"] == 0
    assert [e["resolved"] for e in info["errors"]] == [True]
    assert json.loads((long_out / "manifest.json").read_text())["errors"] == 0
    text = cai("status", long_out)
    assert "resolved" in text.stderr and "not running" in text.stderr


def test_in_progress_records_are_not_also_not_started(tmp_path, stub_server):
    inp = write_prompts(tmp_path / "in.jsonl", [f"q{i}?" for i in range(10)])
    run = tmp_path / "r"
    kill_while_live(stub_server, 6, "run", inp, "--out", run, *stub_args(stub_server), "--concurrency", "2", held=2)
    c = json.loads(cai("status", run, "--json").stdout)["records"]
    assert c["in_progress"] >= 1
    assert c["done"] + c["in_progress"] + c["failed"] + c["not_started"] == c["input"] == 10


def test_wall_time_counts_killed_invocations(tmp_path, stub_server):
    inp = write_prompts(tmp_path / "in.jsonl", [f"q{i}?" for i in range(6)])
    run = tmp_path / "r"
    stub_server.latency = 0.05
    kill_while_live(stub_server, 12, "run", inp, "--out", run, *stub_args(stub_server), "--concurrency", "1")
    assert cai_run("run", inp, "--out", run, *stub_args(stub_server)).returncode == 0
    m = json.loads((run / "manifest.json").read_text())
    assert m["invocations"] == 2
    # The killed invocation made 12 answered calls at 0.05 s each before it was killed.
    assert m["wall_seconds"] >= 12 * 0.05
    assert m["started"] <= m["ended"]


def test_summary_and_manifest_report_retries_429s_and_unparsed(tmp_path, stub_server, monkeypatch):
    inp = write_prompts(tmp_path / "in.jsonl", [f"q{i}?" for i in range(3)])
    stub_server.add_fault("429", times=2, retry_after=0.01)
    stub_server.add_fault("notjson", times=2, when=lambda path, body: "response_format" in body)
    args = [a for a in stub_args(stub_server) if a != stub_server.url and a != "--base-url"]
    res = cai("run", inp, "--out", tmp_path / "r", *args, "--concurrency", "1",
              env={"OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": stub_server.url})
    assert res.exit_code == 0, res.stderr
    summary = res.stderr.splitlines()[-1]
    assert "2 retries" in summary and "2 rate-limited (429)" in summary and "1 unparsed verdict" in summary
    m = json.loads((tmp_path / "r" / "manifest.json").read_text())
    assert m["unparsed_verdicts"] == 1
    assert m["base_urls"]["generator"] == stub_server.url  # resolved from OPENAI_BASE_URL
    assert m["settings"]["models"]["base_url"] is None
    assert m["estimated_cost_usd"] is None  # openai:stub has no price
    assert m["started"] and m["ended"]


@pytest.mark.parametrize("cmd", [[], ["run"], ["status"], ["export"], ["constitution"], ["rbr"]])
def test_dash_h_and_examples(cmd):
    res = cai(*cmd, "-h")
    assert res.exit_code == 0 and re.search(r"Example:\s+cai ", res.stdout)


def test_choice_options_list_their_choices(tmp_path):
    assert "jsonl|parquet" in cai("run", "--help").stdout and "separate|joint" in cai("run", "--help").stdout
    res = cai("export", tmp_path, "--format", "xml")
    assert res.exit_code == 2 and "jsonl" in res.stderr and "parquet" in res.stderr


def test_system_role_for_developer(tmp_path, stub_server):
    inp = tmp_path / "in.jsonl"
    inp.write_text(json.dumps({"id": "d", "messages": [{"role": "developer", "content": "Be terse."},
                                                        {"role": "user", "content": "Hi?"}]}) + "\n")
    run = tmp_path / "r"
    assert cai_run("run", inp, "--out", run, *stub_args(stub_server), "--system-role-for-developer").returncode == 0
    assert read_jsonl(run / "sft.jsonl")[0]["messages"][0]["role"] == "system"
    assert cai_run("export", run, "--keep-developer-role").returncode == 0
    assert read_jsonl(run / "sft.jsonl")[0]["messages"][0]["role"] == "developer"


def test_exports_follow_the_umask(tmp_path, stub_server):
    inp = write_prompts(tmp_path / "in.jsonl", ["hi?"])
    run = tmp_path / "r"
    res = cai_run("run", inp, "--out", run, *stub_args(stub_server), preexec_fn=lambda: os.umask(0o022))
    assert res.returncode == 0, res.stderr
    for name in ("sft.jsonl", "pairs.jsonl", "critiques.jsonl", "manifest.json", "run.sqlite"):
        assert (run / name).stat().st_mode & 0o777 == 0o644, name


def test_status_never_creates_or_writes(tmp_path):
    empty = tmp_path / "nothing"
    empty.mkdir()
    res = cai("status", empty)
    assert res.exit_code == 2 and list(empty.iterdir()) == []
    assert cai("status", tmp_path / "missing").exit_code == 2 and not (tmp_path / "missing").exists()


def test_printed_commands_never_repeat_retry_failed_or_restart():
    argv = ["cai", "run", "my prompts.jsonl", "--out", "runs/x", "--restart", "--retry-failed"]
    assert resume_command(argv) == "cai run 'my prompts.jsonl' --out runs/x"
    assert retry_command(argv) == "cai run 'my prompts.jsonl' --out runs/x --retry-failed"


@pytest.mark.parametrize("args,named", [
    (["run", "in.jsonl", "--rounds", "-1"], "'--rounds'"),
    (["run", "in.jsonl", "--rounds", "two"], "'--rounds'"),
    (["run", "in.jsonl", "--format", "xml"], "'--format'"),
    (["run", "in.jsonl", "--temperature", "nan"], "'--temperature'"),
    (["run", "in.jsonl", "--temperature", "3"], "'--temperature'"),
    (["run", "in.jsonl", "--max-tokens", "0"], "'--max-tokens'"),
    (["run", "in.jsonl", "--concurrency", "0"], "'--concurrency'"),
    (["run", "in.jsonl", "--limit", "0"], "'--limit'"),
    (["run", "in.jsonl", "--fewshot", "-1"], "'--fewshot'"),
    (["run", "in.jsonl", "--bogus"], "--bogus"),
    (["run"], "'input'"),
    (["export", "runs/x", "--format", "xml"], "'--format'"),
    (["nosuch"], "'nosuch'"),
])
def test_usage_errors_are_one_line_naming_the_option(tmp_path, args, named):
    """Click's usage errors were three lines (usage, try, error); now one line like every other error."""
    res = cai(*args)
    assert res.exit_code == 2
    assert res.stderr.count("\n") == 1 and res.stderr.startswith("error: cai") and named in res.stderr
    assert not (tmp_path / "runs").exists()


def test_usage_error_from_the_installed_command_is_one_line(tmp_path):
    res = cai_run("run", tmp_path / "in.jsonl", "--rounds", "-1")
    assert res.returncode == 2
    assert one_line_error(res.stderr) == res.stderr.rstrip("\n")
    assert res.stderr.startswith("error: ") and "'--rounds'" in res.stderr and res.stdout == ""
