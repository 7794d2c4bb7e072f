"""examples/cron: tick.sh run for real (exit code passed on, log header, bounded log), and light checks of the
crontab and the systemd units. No test bounds wall time or sleeps; batches move only when the test says so."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from cai import batch
from cai.batch import EXIT_WAITING
from helpers import write_prompts
from reliability import KEY

CRON = Path(__file__).resolve().parent.parent / "examples" / "cron"
TICK = CRON / "tick.sh"
HEADER = re.compile(r"^== \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ cai batch tick (?P<rest>.*) \(pid \d+\)$")
SHELLS = [s for s in ("bash", "sh") if shutil.which(s)]


def cai_executable(tmp: Path) -> str:
    """The `cai` script of this Python (next to sys.executable, else on PATH), else a wrapper running
    `python -m cai`."""
    here = Path(sys.executable).with_name("cai")
    if here.is_file() and os.access(here, os.X_OK):
        return str(here)
    found = shutil.which("cai")
    if found:
        return found
    wrapper = tmp / "cai"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m cai "$@"\n')
    wrapper.chmod(0o755)
    return str(wrapper)


def tick_sh(tmp: Path, run_dir: Path, *extra: str, shell: str = "bash",
            **env: str) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "CAI": cai_executable(tmp), "OPENAI_API_KEY": KEY, **env}
    return subprocess.run([shell, str(TICK), str(run_dir), *extra], env=full, capture_output=True, text=True,
                          timeout=600)  # a hang fails here, not a timing bound


def log_entries(log: Path) -> list[tuple[str, list[str]]]:
    """(header rest, output lines) per tick in a batch.log."""
    entries: list[tuple[str, list[str]]] = []
    for line in log.read_text().splitlines():
        m = HEADER.match(line)
        if m:
            entries.append((m["rest"], []))
        else:
            assert entries, f"output before any header: {line!r}"
            entries[-1][1].append(line)
    return entries


@pytest.mark.parametrize("shell", SHELLS)
def test_not_a_batch_job_exit_code_and_log(tmp_path: Path, shell: str) -> None:
    run_dir = tmp_path / "runs" / "nightly"
    run_dir.mkdir(parents=True)
    direct = subprocess.run([cai_executable(tmp_path), "batch", "tick", str(run_dir)], capture_output=True,
                            text=True, timeout=600)
    r = tick_sh(tmp_path, run_dir, shell=shell)
    assert direct.returncode == 2
    assert r.returncode == direct.returncode
    assert r.stdout == r.stderr == ""  # everything went to the log
    [(rest, output)] = log_entries(run_dir / "batch.log")
    assert rest == str(run_dir)
    assert output == [f"error: {run_dir}: not a cai run (no run.sqlite)"]
    assert sorted(p.name for p in run_dir.iterdir()) == ["batch.log"]


def test_missing_run_dir_is_not_created(tmp_path: Path) -> None:
    run_dir = tmp_path / "runs" / "nightly"
    r = tick_sh(tmp_path, run_dir)
    assert r.returncode == 2
    assert "not a cai run" in r.stderr
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("shell", SHELLS)
def test_log_is_rotated_past_the_limit(tmp_path: Path, shell: str) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    log, old = run_dir / "batch.log", run_dir / "batch.log.1"
    log.write_text("old tick output\n" * 20)  # 320 bytes
    old.write_text("the log before that\n")
    r = tick_sh(tmp_path, run_dir, CAI_LOG_MAX_BYTES="100", shell=shell)
    assert r.returncode == 2
    assert old.read_text() == "old tick output\n" * 20  # replaced the older one
    [(_, output)] = log_entries(log)
    assert len(output) == 1 and log.stat().st_size < 320
    # under the limit: appended, not rotated
    tick_sh(tmp_path, run_dir, CAI_LOG_MAX_BYTES="100000", shell=shell)
    assert len(log_entries(log)) == 2
    assert old.read_text() == "old tick output\n" * 20


def test_bad_log_limit_is_refused(tmp_path: Path) -> None:
    r = tick_sh(tmp_path, tmp_path, CAI_LOG_MAX_BYTES="1M")
    assert r.returncode == 2
    assert "CAI_LOG_MAX_BYTES" in r.stderr
    assert not (tmp_path / "batch.log").exists()


def test_real_job_waiting_then_progress(tmp_path: Path, batch_server: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """75 while the batch is open (what SuccessExitStatus=75 takes as success), 0 once it ended."""
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    prompts = write_prompts(tmp_path / "prompts.jsonl", ["How do tides work?", "Why is the sky blue?"])
    out = tmp_path / "runs" / "nightly"
    report = batch.submit(prompts, out=out, model="openai:stub", base_url=batch_server.url, rounds=1,
                          max_tokens=16, max_retries=2, timeout=60.0)
    assert report.exit_code == 0 and report.submitted
    waiting = tick_sh(tmp_path, out, "--json")
    assert waiting.returncode == EXIT_WAITING, (out / "batch.log").read_text()
    batch_server.finish_all()
    moved = tick_sh(tmp_path, out)
    assert moved.returncode == 0, (out / "batch.log").read_text()
    entries = log_entries(out / "batch.log")
    assert [rest for rest, _ in entries] == [f"{out} --json", str(out)]
    assert '"exit_code": 75' in "\n".join(entries[0][1])
    assert "stored 2 answers" in entries[1][1][-1] and entries[1][1][-1].endswith("(exit 0)")


def test_systemd_units() -> None:
    service = (CRON / "cai-batch-tick@.service").read_text()
    timer = (CRON / "cai-batch-tick@.timer").read_text()
    assert re.search(r"^Type=oneshot$", service, re.M)
    assert re.search(r"^SuccessExitStatus=75$", service, re.M)
    assert re.search(r"^EnvironmentFile=", service, re.M)
    [exec_start] = re.findall(r"^ExecStart=(.*)$", service, re.M)
    assert "/examples/cron/tick.sh runs/%i" in exec_start
    assert re.search(r"^OnCalendar=\*:0/10$", timer, re.M)
    assert re.search(r"^Persistent=true$", timer, re.M)


def test_crontab_lines() -> None:
    text = (CRON / "crontab").read_text()
    jobs = [line for line in text.splitlines() if line and not line.startswith("#") and "=" not in line.split()[0]]
    assert len(jobs) == 2
    assert jobs[0].startswith("0 1 * * * cd /path/to/project")
    assert '"$CAI" batch submit prompts/today.jsonl --model openai:gpt-4o-mini --out runs/nightly' in jobs[0]
    assert jobs[1].startswith("*/10 * * * * cd /path/to/project") and "tick.sh runs/nightly" in jobs[1]
    assert "OPENAI_API_KEY=" not in "\n".join(jobs) and "sk-" not in "\n".join(jobs)
    assert os.access(TICK, os.X_OK)
