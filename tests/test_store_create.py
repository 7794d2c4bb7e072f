"""A store whose creation was killed: the run starts again as new, never refused as damaged; data is never dropped."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from cai.store import DB_NAME
from cai.store.migrations import SCHEMA
from helpers import write_prompts
from reliability import assert_complete, cai_run, env, one_line_error, stub_args

STATEMENTS = [s.strip() for s in SCHEMA.split(";") if s.strip()]
# What a kill -9 while a store was being created can leave: (file, the SQLite statements run on it before the kill).
# An older cai made run.sqlite in place, one autocommitted statement at a time; cai now builds run.sqlite.new in
# one transaction and renames it.
KILLED = {
    "empty file": (DB_NAME, []),
    "no tables": (DB_NAME, ["PRAGMA journal_mode=WAL"]),
    "some tables": (DB_NAME, ["PRAGMA journal_mode=WAL", *STATEMENTS[:2]]),
    "unfinished new file": (f"{DB_NAME}.new", ["BEGIN", *STATEMENTS[:2]]),
}
# Runs `python -m cai ARGS` and stops the process (SIGSTOP) where it says: "open NAME" just after SQLite opened a
# file named NAME, "rename NAME" just before NAME is renamed; the test then kills it. Audit hooks: nothing in cai.
STOPPER = """
import os, runpy, signal, sys

where, name = sys.argv[1], sys.argv[2]
opened = []

def stop(event, args):
    if event == "sqlite3.connect":
        opened.append(os.path.basename(str(args[0])) == name)
    if (where == "open" and event == "sqlite3.connect/handle" and opened[-1]) or (
            where == "rename" and event == "os.rename" and os.path.basename(str(args[0])) == name):
        os.kill(os.getpid(), signal.SIGSTOP)

sys.addaudithook(stop)
sys.argv = ["cai", *sys.argv[3:]]
runpy.run_module("cai", run_name="__main__")
"""


def die_after(db: Path, statements: list[str]) -> None:
    """Run `statements` on database `db` in a process that then dies without closing it, as a kill -9 would."""
    code = ("import os, sqlite3, sys\nc = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
            "for s in sys.argv[2:]:\n    c.execute(s)\nos._exit(0)")
    subprocess.run([sys.executable, "-c", code, str(db), *statements], check=True)


def resumes(run: Path, inp: Path, srv) -> None:
    """`cai run` finishes the run normally, `cai status` reports it, and nothing of the creation is left over."""
    res = cai_run("run", inp, "--out", run, *stub_args(srv))
    assert res.returncode == 0, res.stderr
    assert assert_complete(run) == {"p0": "done", "p1": "done"}
    status = cai_run("status", run)
    assert status.returncode == 0 and "2 done" in status.stderr, status.stderr
    assert not [p.name for p in run.iterdir() if p.name.startswith(f"{DB_NAME}.new")]


@pytest.mark.parametrize("state", list(KILLED))
def test_a_store_left_by_a_killed_creation_starts_as_a_new_run(tmp_path, stub_server, state):
    inp = write_prompts(tmp_path / "in.jsonl", ["one?", "two?"])
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.lock").touch()  # the killed process held the run lock (its file stays)
    name, statements = KILLED[state]
    die_after(run / name, statements)
    if name == DB_NAME:  # nothing stored: an empty run, never a damaged one
        status = cai_run("status", run)
        assert status.returncode == 0 and "0 done" in status.stderr, status.stderr
    resumes(run, inp, stub_server)


@pytest.mark.parametrize("where", [("open", f"{DB_NAME}.new"), ("rename", f"{DB_NAME}.new"), ("open", DB_NAME)],
                         ids=["new file opened", "new file renamed", "store opened"])
def test_a_run_killed_while_creating_its_store_resumes(tmp_path, stub_server, where):
    inp = write_prompts(tmp_path / "in.jsonl", ["one?", "two?"])
    run = tmp_path / "run"
    (tmp_path / "stop.py").write_text(STOPPER)
    proc = subprocess.Popen([sys.executable, str(tmp_path / "stop.py"), *where, "run", inp, "--out", run,
                             *stub_args(stub_server)], env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    _, wait_status = os.waitpid(proc.pid, os.WUNTRACED)  # until it stops itself there (or ends)
    stopped = os.WIFSTOPPED(wait_status)
    if stopped:
        proc.kill()
    _, err = proc.communicate()
    assert stopped, f"cai never reached {where}: {err}"
    assert stub_server.count() == 0
    resumes(run, inp, stub_server)


@pytest.mark.parametrize("drop", ["steps", "meta"])
def test_a_store_that_holds_data_but_lacks_tables_is_refused(tmp_path, stub_server, drop):
    inp = write_prompts(tmp_path / "in.jsonl", ["one?", "two?"])
    run = tmp_path / "run"
    assert cai_run("run", inp, "--out", run, *stub_args(stub_server)).returncode == 0
    with sqlite3.connect(run / DB_NAME) as db:
        db.execute(f"DROP TABLE {drop}")
    db.close()
    kept, sent = (run / DB_NAME).read_bytes(), stub_server.count()
    for cmd in (["run", inp, "--out", run, *stub_args(stub_server)], ["status", run]):
        res = cai_run(*cmd)
        assert res.returncode == 2 and "damaged store" in one_line_error(res.stderr), res.stderr
    assert (run / DB_NAME).read_bytes() == kept and stub_server.count() == sent
