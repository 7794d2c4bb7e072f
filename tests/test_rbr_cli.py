"""The `cai rbr` command surface: option names, -h, choices in --help, the group's example, progress and
summary on stderr, and SIGTERM/Ctrl-C ending `rbr grade` with exit 130 and no half-written output."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import cai.cli.rbr as rbr_cli
from cai.cli import app
from cai.cli.rbr import rbr_app
from cai.constitution import load
from cai.rbr.grader import MODES
from helpers import read_jsonl

SUBCOMMANDS = ["grade", "eval", "fit", "metrics", "refusal-eval"]
N = len(load("rbr-safety").propositions)  # grader calls per response in separate mode with logprobs
REFUSAL = "I'm sorry, but I can't help with that."


def rbr(*args: object, env: dict[str, str] | None = None):
    return CliRunner().invoke(rbr_app, [str(a) for a in args], env=env, catch_exceptions=False)


def write_rows(path: Path, n: int) -> Path:
    """`n` rows, two per prompt: a refusal and a compliance, all of type Hard Refuse."""
    rows = [{"id": f"r{i}", "prompt": f"How do I build bomb number {i // 2}?",
             "response": REFUSAL if i % 2 == 0 else f"Step {i}: gather the parts.", "response_type": "Hard Refuse"}
            for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def refusal_logprobs(body: dict) -> list[list[tuple[str, float]]]:
    """Grader logprobs: a refusal says it cannot help and apologises, and nothing else is true."""
    text = body["messages"][-1]["content"]
    question = next(line for line in text.splitlines() if line.startswith("Question about the response:"))
    says = "cannot or will not help" in question or ("apology" in question and "sympathy" not in question)
    return [[("Yes" if says and REFUSAL in text else "No", -0.1)]]


def subprocess_env() -> dict[str, str]:
    """The environment for `python -m cai` children: a key for the stub, and no COLUMNS (stderr width 80)."""
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    env.update(OPENAI_API_KEY="test-key", PYTHONUNBUFFERED="1")
    return env


def test_output_options_share_names_across_commands():
    """A store folder is --out, a written file is --output/-o, the grader model is --grader (as in `cai run`)."""
    run_help = CliRunner().invoke(app, ["run", "--help"]).stdout
    assert "--grader " in run_help and "--out " in run_help
    for cmd in ("grade", "eval"):
        text = rbr(cmd, "--help").stdout
        assert "--grader " in text and "--out " in text and "-o, --output " in text, text
        assert "--out-file" not in text and "--model" not in text, text
    fit_help = rbr("fit", "--help").stdout
    assert "-o, --output " in fit_help and "--out " not in fit_help


def test_grade_fit_and_eval_write_where_output_says(stub_server, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    monkeypatch.chdir(tmp_path)
    stub_server.logprobs_fn = refusal_logprobs
    rows = write_rows(tmp_path / "rows.jsonl", 4)
    common = ["--grader", "openai:stub", "--base-url", stub_server.url, "--out", tmp_path / "store", "--quiet"]
    res = rbr("grade", rows, *common, "-o", tmp_path / "g.jsonl", "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["output"] == str(tmp_path / "g.jsonl")
    assert [g["id"] for g in read_jsonl(tmp_path / "g.jsonl")] == ["r0", "r1", "r2", "r3"]
    assert not (tmp_path / "store" / "graded.jsonl").exists()
    # --model stays a hidden alias of --grader: the same calls, all answered from the store.
    res = rbr("grade", rows, "--model", "openai:stub", *common[2:], "--output", tmp_path / "g2.jsonl", "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["calls_made"] == 0 and (tmp_path / "g2.jsonl").read_text() == (
        tmp_path / "g.jsonl").read_text()
    res = rbr("grade", rows, "--model", "openai:stub", "--grader", "openai:other", *common[2:])
    assert res.exit_code == 2 and "--grader" in res.stderr
    res = rbr("fit", tmp_path / "g.jsonl", "-o", tmp_path / "w.json", "--holdout", "0", "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["output"] == str(tmp_path / "w.json")
    assert set(json.loads((tmp_path / "w.json").read_text())) == {"Hard Refuse"}
    gold = tmp_path / "gold.jsonl"
    gold.write_text("".join(json.dumps({**r, "propositions": {"inability_to_comply": r["response"] == REFUSAL}})
                            + "\n" for r in read_jsonl(rows)))
    res = rbr("eval", gold, *common, "-o", tmp_path / "e.jsonl", "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["propositions"]["inability_to_comply"]["accuracy"] == 1.0
    assert len(read_jsonl(tmp_path / "e.jsonl")) == 4


@pytest.mark.parametrize("via_root", [False, True], ids=["rbr_app", "cai"])
@pytest.mark.parametrize("cmd", [[], *([c] for c in SUBCOMMANDS)], ids=lambda c: " ".join(["rbr", *c]))
def test_dash_h_is_help(cmd, via_root):
    args = ["rbr", *cmd] if via_root else cmd
    short = CliRunner().invoke(app if via_root else rbr_app, [*args, "-h"])
    long = CliRunner().invoke(app if via_root else rbr_app, [*args, "--help"])
    assert short.exit_code == 0 and long.exit_code == 0, short.output
    assert short.stdout == long.stdout and "Usage:" in short.stdout


def test_choice_options_list_their_choices():
    assert {m.value for m in rbr_cli.GraderMode} == set(MODES)
    for cmd in ("grade", "eval"):
        assert "--grader-mode <separate|joint>" in rbr(cmd, "--help").stdout
    assert "--group-by <prompt|type>" in rbr("fit", "--help").stdout
    assert "--refusal-method <checks|grader|both>" in rbr("metrics", "--help").stdout
    assert "--method <checks|grader>" in rbr("refusal-eval", "--help").stdout


def test_a_wrong_choice_exits_2_naming_the_choices(tmp_path):
    rows = write_rows(tmp_path / "rows.jsonl", 1)
    res = rbr("grade", rows, "--grader-mode", "both")
    assert res.exit_code == 2
    assert "'both'" in res.stderr and "'separate'" in res.stderr and "'joint'" in res.stderr, res.stderr
    res = rbr("fit", rows, "-o", tmp_path / "w.json", "--group-by", "record")
    assert res.exit_code == 2
    assert "'record'" in res.stderr and "'prompt'" in res.stderr and "'type'" in res.stderr, res.stderr
    assert not (tmp_path / "w.json").exists()


def test_no_training_pairs_suggests_group_by_type_only_when_it_was_not_given(tmp_path):
    """One class everywhere: nothing to pair either way; the hint names the way out that is left."""
    graded = tmp_path / "g.jsonl"
    graded.write_text("".join(json.dumps({"prompt": f"p{i}", "response": "r", "response_type": "T", "class": "ideal",
                                          "propositions": {"x": {"p_yes": 0.9}}}) + "\n" for i in range(4)))
    res = rbr("fit", graded, "-o", tmp_path / "w.json", "--holdout", "0")
    assert res.exit_code == 2 and "no training pairs" in res.stderr and "try --group-by type" in res.stderr
    res = rbr("fit", graded, "-o", tmp_path / "w.json", "--holdout", "0", "--group-by", "type")
    assert res.exit_code == 2 and "no training pairs" in res.stderr, res.stderr
    assert "--group-by" not in res.stderr and "same response type with different classes" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and not (tmp_path / "w.json").exists()


def test_group_help_has_an_example():
    for runner_app, args in ((rbr_app, ["--help"]), (app, ["rbr", "--help"])):
        res = CliRunner().invoke(runner_app, args)
        assert res.exit_code == 0 and re.search(r"Example:\s+cai rbr ", res.stdout), res.stdout


def test_grade_progress_and_summary_go_to_stderr(stub_server, tmp_path, monkeypatch):
    """Not on a terminal, a progress line (records done/total, rate, ETA) every PROGRESS_EVERY seconds; 0 here,
    so one per graded row. stdout stays empty without --json."""
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    monkeypatch.setattr(rbr_cli, "PROGRESS_EVERY", 0.0, raising=False)
    stub_server.logprobs_fn = lambda body: [[("No", -0.1)]]
    rows = write_rows(tmp_path / "rows.jsonl", 4)
    res = rbr("grade", rows, "--grader", "openai:stub", "--base-url", stub_server.url, "--out", tmp_path / "s",
              "--concurrency", "1")
    assert res.exit_code == 0, res.output
    assert res.stdout == ""
    lines = res.stderr.splitlines()
    progress = [line for line in lines if line.startswith("records ")]
    assert [p.split(" · ")[0] for p in progress] == [f"records {i}/4" for i in range(1, 5)], res.stderr
    assert all(p.split(" · ")[1].endswith("/s") for p in progress)
    assert all("ETA " in p for p in progress[:3]) and f"calls {4 * N}" in progress[-1]
    summary = [line for line in lines if line.startswith("wrote ")]
    assert len(summary) == 1 and summary[0].startswith(f"wrote {tmp_path / 's' / 'graded.jsonl'}: "), res.stderr
    assert "mean reward" in summary[0]
    assert any(line.startswith(f"4 responses, separate mode: {4 * N} calls made") for line in lines)
    quiet = rbr("grade", rows, "--grader", "openai:stub", "--base-url", stub_server.url, "--out", tmp_path / "s",
                "--quiet")
    assert quiet.exit_code == 0 and not any(line.startswith("records ") for line in quiet.stderr.splitlines())


def test_grade_says_once_which_store_folder_it_created(stub_server, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    monkeypatch.chdir(tmp_path)
    stub_server.logprobs_fn = lambda body: [[("No", -0.1)]]
    rows = write_rows(tmp_path / "rows.jsonl", 2)
    args = ["grade", rows, "--grader", "openai:stub", "--base-url", stub_server.url, "--quiet"]
    first = rbr(*args)
    assert first.exit_code == 0, first.output
    created = [line for line in first.stderr.splitlines() if line.startswith("created ")]
    assert created == [f"created {Path('runs') / 'rbr-rows'}: the store of the grader's calls (a rerun reuses "
                       "them; --out picks another folder)"], first.stderr
    assert (tmp_path / "runs" / "rbr-rows" / "run.sqlite").exists()
    again = rbr(*args)
    assert again.exit_code == 0 and "created " not in again.stderr


def test_long_paths_on_stderr_are_not_wrapped(stub_server, tmp_path):
    """stderr is a pipe (rich would wrap at 80 columns): printed paths stay on one line to copy-paste."""
    stub_server.logprobs_fn = lambda body: [[("No", -0.1)]]
    rows = write_rows(tmp_path / "rows.jsonl", 2)
    deep = tmp_path / ("a-rather-long-folder-name-" * 4) / "graded-output-file-name.jsonl"
    store = tmp_path / ("store-folder-with-a-long-name-" * 3)
    assert len(str(deep)) > 100 and len(str(store)) > 100
    cmd = [sys.executable, "-m", "cai", "rbr", "grade", str(rows), "--grader", "openai:stub", "--base-url",
           stub_server.url, "--out", str(store), "--output", str(deep), "--quiet"]
    proc = subprocess.run(cmd, env=subprocess_env(), stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    assert any(line.startswith(f"wrote {deep}: ") for line in lines), proc.stderr
    assert any(line.endswith(f"store {store}") for line in lines), proc.stderr
    assert len(read_jsonl(deep)) == 2


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_mid_grading_exits_130_and_leaves_no_output(stub_server, tmp_path, sig):
    stub_server.latency = 0.2
    stub_server.logprobs_fn = lambda body: [[("No", -0.1)]]
    rows = write_rows(tmp_path / "rows.jsonl", 12)
    out_dir = tmp_path / "graded"
    output = out_dir / "graded.jsonl"
    cmd = [sys.executable, "-m", "cai", "rbr", "grade", str(rows), "--grader", "openai:stub", "--base-url",
           stub_server.url, "--out", str(tmp_path / "store"), "--output", str(output), "--concurrency", "2",
           "--quiet"]
    proc = subprocess.Popen(cmd, env=subprocess_env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        # Signal only once the grader is talking to the server (more requests than can be in flight at once).
        stub_server.wait_for_requests(10, timeout=120, until=lambda: proc.poll() is not None)
        assert proc.poll() is None, proc.communicate()[1]
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, stderr
    assert stdout == ""
    assert len(stderr.strip().splitlines()) == 1 and "interrupted" in stderr and "resume" in stderr, stderr
    assert not out_dir.exists() or list(out_dir.iterdir()) == []
    # The same command again finishes, reusing the calls answered before the signal.
    stub_server.latency = 0.0
    sent_before = stub_server.count()
    done = subprocess.run([*cmd, "--json"], env=subprocess_env(), stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    stats = json.loads(done.stdout)
    assert stats["calls_cached"] > 0 and stats["calls_made"] + stats["calls_cached"] == 12 * N
    assert stub_server.count() - sent_before == stats["calls_made"]
    assert [g["id"] for g in read_jsonl(output)] == [f"r{i}" for i in range(12)]
    assert sorted(p.name for p in out_dir.iterdir()) == ["graded.jsonl"]


@pytest.mark.parametrize("command", ["eval", "grade"])
@pytest.mark.parametrize("row,message", [
    ({"response_type": "Comply", "propositions": {"apology": True}}, None),
    ({"response_type": "Complies"}, "unknown response type 'Complies' (constitution rbr-safety has: Comply, "),
    ({"response_type": "Comply", "propositions": {"apology": True, "apologizes": False}},
     "unknown proposition 'apologizes' in `propositions`"),
])
def test_unknown_names_in_a_file_are_refused_at_its_line_before_any_call(stub_server, tmp_path, command, row, message):
    good = {"prompt": "hi", "completion": "hello", "response_type": "Comply", "propositions": {"apology": False}}
    path = tmp_path / "gold.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps({"prompt": "hi", "completion": "hello", **row}) + "\n")
    res = CliRunner().invoke(app, ["rbr", command, str(path), "--grader", "openai:stub", "--base-url",
                                   stub_server.url, "--out", str(tmp_path / "store"), "--quiet"],
                             env={"OPENAI_API_KEY": "k"}, catch_exceptions=False)
    if message is None:
        assert res.exit_code == 0, res.stderr
        return
    assert res.exit_code == 2 and res.stderr.startswith(f"error: {path}:2: {message}") and res.stderr.count("\n") == 1
    assert stub_server.count() == 0 and not (tmp_path / "store").exists()
