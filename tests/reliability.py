"""Helpers for the reliability tests: subprocess runs against the stub server, tmpfs mounts, run checks."""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

KEY = "sk-test-reliability-0123456789"
FAST = ["--rounds", "2", "--max-tokens", "16", "--quiet", "--max-retries", "2", "--timeout", "5"]


def stub_args(srv: Any) -> list[str]:
    return ["--model", "openai:stub", "--base-url", srv.url, *FAST]


def env() -> dict[str, str]:
    return {**os.environ, "OPENAI_API_KEY": KEY, "PYTHONUNBUFFERED": "1"}


def cai_proc(*args: Any, **kw: Any) -> subprocess.Popen[str]:
    """`python -m cai ARGS` as a child process (stdout and stderr piped, text)."""
    return subprocess.Popen([sys.executable, "-m", "cai", *map(str, args)], env=kw.pop("env", env()),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def cai_run(*args: Any, timeout: float = 600, **kw: Any) -> subprocess.CompletedProcess[str]:
    proc = cai_proc(*args, **kw)
    out, err = proc.communicate(timeout=timeout)  # a hang fails the test here, not a timing bound
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def one_line_error(stderr: str) -> str:
    """The single `error: …` line of a clean failure (and no traceback)."""
    assert "Traceback" not in stderr, stderr
    lines = [ln for ln in stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, stderr
    return lines[0]


def stored_calls(run: Path) -> int:
    with contextlib.closing(sqlite3.connect(f"{(run / 'run.sqlite').as_uri()}?mode=ro", uri=True)) as db:
        return db.execute("SELECT COUNT(*) FROM calls").fetchone()[0]


def assert_complete(run: Path) -> dict[str, str]:
    """No record is `done` without every step its settings require; returns {record id: status}."""
    with contextlib.closing(sqlite3.connect(f"{(run / 'run.sqlite').as_uri()}?mode=ro", uri=True)) as db:
        loop = json.loads(db.execute("SELECT value FROM meta WHERE key='settings'").fetchone()[0])["loop"]
        statuses = dict(db.execute("SELECT id, status FROM records"))
        for rid, status in statuses.items():
            if status != "done":
                continue
            steps = {(k, r): json.loads(d) for k, r, d in
                     db.execute("SELECT kind, round, data FROM steps WHERE record_id=?", (rid,))}
            assert ("draft", 0) in steps, rid
            for rnd in range(1, loop["rounds"] + 1):
                crit = steps.get(("critique", rnd))
                assert crit is not None, (rid, rnd)
                clean = crit["verdict"] is not None and not crit["verdict"]["violates"]
                if loop["stop_when_clean"] and clean:
                    break
                assert ("revise", rnd) in steps, (rid, rnd)
    return statuses


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` mounted at `path` (root only; the test is skipped where mounting is not allowed)."""
    path.mkdir(parents=True, exist_ok=True)
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                         capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({res.stderr.strip() or res.returncode}); "
                    "the injected-failure variant covers this")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def remount(path: Path, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(path)], check=True)


def kill_while_live(srv: Any, answered: int, *args: Any, held: int = 1) -> None:
    """Run `cai ARGS`, let the server answer `answered` requests and hold the next `held`, then kill -9 the
    run mid-call (no sleep decides when); the server answers normally again afterwards."""
    srv.hold_after(answered)
    proc = cai_proc(*args)
    srv.wait_for_requests(answered + held, until=lambda: proc.poll() is not None)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.kill()
    proc.wait()
    srv.resume()
