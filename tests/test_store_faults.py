"""Data and money: a failed commit stops the run, one bad write fails one record, unencodable replies, the run lock."""

from __future__ import annotations

import asyncio
import resource
import signal
import sqlite3
from pathlib import Path

from cai.store import Store
from helpers import read_jsonl, write_prompts
from reliability import (
    assert_complete,
    cai_proc,
    cai_run,
    kill_while_live,
    one_line_error,
    remount,
    stored_calls,
    stub_args,
    tmpfs,
)


def _limit_file_size(limit: int):
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def _check_stopped(proc_result, stub_server, run: Path) -> None:
    """Exit 2 with one line naming the store; what was committed is kept; no call after the failure."""
    assert proc_result.returncode == 2, proc_result.stderr
    line = one_line_error(proc_result.stderr)
    assert str(run / "run.sqlite") in line and "cannot write the run store" in line
    assert "nothing finished is lost" not in proc_result.stderr
    # Calls answered but not stored are at most those of the failed commit and the ones in flight.
    assert stub_server.count() - stored_calls(run) < 100
    assert stub_server.count() < 200 * 5 // 2  # it stopped long before paying for the whole input


def test_failed_commit_stops_the_run_then_resume_loses_nothing(tmp_path, stub_server):
    """A commit that fails (the store's file hits RLIMIT_FSIZE: EFBIG) stops the run at once, exit 2."""
    stub_server.reply_words = 120
    stub_server.latency = 0.02
    inp = write_prompts(tmp_path / "in.jsonl", [f"question {i}?" for i in range(200)])
    run = tmp_path / "run"
    res = cai_run("run", inp, "--out", run, *stub_args(stub_server), "--concurrency", "4",
                  preexec_fn=_limit_file_size(300_000))
    _check_stopped(res, stub_server, run)
    assert_complete(run)
    before = stored_calls(run)
    stub_server.reset()
    again = cai_run("run", inp, "--out", run, *stub_args(stub_server), "--concurrency", "4")
    assert again.returncode == 0, again.stderr
    assert stub_server.count() <= 200 * 5 - before  # nothing stored is asked again
    assert set(assert_complete(run).values()) == {"done"}
    clean = tmp_path / "clean"
    assert cai_run("run", inp, "--out", clean, *stub_args(stub_server), "--concurrency", "4").returncode == 0
    for name in ("sft.jsonl", "pairs.jsonl", "critiques.jsonl"):
        assert (run / name).read_text() == (clean / name).read_text(), name


def test_full_disk_stops_the_run_with_exit_2(tmp_path, stub_server):
    """The same on a real full disk: a small tmpfs."""
    stub_server.reply_words = 120
    stub_server.latency = 0.02
    inp = write_prompts(tmp_path / "in.jsonl", [f"question {i}?" for i in range(200)])
    with tmpfs(tmp_path / "disk", "384k") as disk:
        run = disk / "run"
        res = cai_run("run", inp, "--out", run, *stub_args(stub_server), "--concurrency", "4")
        _check_stopped(res, stub_server, run)
        assert_complete(run)
        remount(disk, "size=64m")  # room again: the run resumes and finishes
        again = cai_run("run", inp, "--out", run, *stub_args(stub_server), "--concurrency", "4")
        assert again.returncode == 0, again.stderr
        assert set(assert_complete(run).values()) == {"done"}


def test_a_bad_write_fails_only_its_record(tmp_path):
    """A write SQLite cannot encode rolls back only itself: the other records' writes in the same group
    commit are kept, the record gets an error row, and none of its later writes are kept."""
    store = Store(tmp_path)

    async def go() -> None:
        for i, rid in enumerate(("a", "b", "c")):
            store.add_record(i, rid, [{"role": "user", "content": rid}], {})
        store.add_step("a", 0, "draft", 0, {"response": "fine"})
        store.add_step("b", 0, "draft", 0, {"response": "lone \ud800 surrogate"})
        store.add_step("b", 1, "critique", 1, {"response": "later"})
        store.add_step("c", 0, "draft", 0, {"response": "also fine"})
        store.set_status("b", "done")
        store.set_status("a", "done")
        await store.flush()

    try:
        asyncio.run(go())
        assert store.statuses() == {"a": "done", "b": "failed", "c": "pending"}
        assert [s.response for s in store.steps("a")] == ["fine"]
        assert store.steps("b") == []
        assert [s.response for s in store.steps("c")] == ["also fine"]
        assert [(e["id"], e["stage"], e["error_class"]) for e in store.errors()] == \
            [("b", "store", "UnicodeEncodeError")]
        assert store.broken is None
    finally:
        store.close()


def test_unencodable_reply_is_stored_sanitised_and_the_run_goes_on(tmp_path, stub_server):
    stub_server.reply_fn = lambda kind, body: None if "response_format" in body else "half \ud800 a pair"
    inp = write_prompts(tmp_path / "in.jsonl", ["one?", "two?", "three?"])
    run = tmp_path / "run"
    res = cai_run("run", inp, "--out", run, *stub_args(stub_server))
    assert res.returncode == 0, res.stderr
    assert set(assert_complete(run).values()) == {"done"}
    finals = [r["messages"][-1]["content"] for r in read_jsonl(run / "sft.jsonl")]
    assert finals == ["half \ufffd a pair"] * 3
    calls = stub_server.count()
    assert cai_run("run", inp, "--out", run, *stub_args(stub_server)).returncode == 0
    assert stub_server.count() == calls  # stored, so never asked again


def test_run_lock_one_writer_per_folder(tmp_path, stub_server):
    inp = write_prompts(tmp_path / "in.jsonl", [f"q{i}?" for i in range(6)])
    run = tmp_path / "run"
    stub_server.hold_after(3)  # the first process is live and waiting on the server
    # --timeout 600: the held request must not time out (and be retried) while the others are refused.
    first = cai_proc("run", inp, "--out", run, *stub_args(stub_server), "--concurrency", "1", "--timeout", "600")
    try:
        stub_server.wait_for_requests(4, until=lambda: first.poll() is not None)
        assert first.poll() is None
        second = cai_run("run", inp, "--out", run, *stub_args(stub_server))
        assert second.returncode == 3
        line = one_line_error(second.stderr)
        assert f"pid {first.pid}" in line and str(run) in line
        for cmd in (["run", inp, "--out", run, "--restart", *stub_args(stub_server)], ["export", run]):
            res = cai_run(*cmd)
            assert res.returncode == 3 and f"pid {first.pid}" in one_line_error(res.stderr)
        status = cai_run("status", run)
        assert status.returncode == 0 and f"running (pid {first.pid})" in status.stderr
        assert stub_server.count() == 4  # the refused processes sent nothing
    finally:
        stub_server.resume()
        out, err = first.communicate(timeout=600)
    assert first.returncode == 0, err
    assert "not running" in cai_run("status", run).stderr


def test_a_killed_writer_leaves_no_lock_behind(tmp_path, stub_server):
    inp = write_prompts(tmp_path / "in.jsonl", [f"q{i}?" for i in range(4)])
    run = tmp_path / "run"
    kill_while_live(stub_server, 2, "run", inp, "--out", run, *stub_args(stub_server))
    assert (run / "run.lock").exists()
    res = cai_run("run", inp, "--out", run, *stub_args(stub_server))
    assert res.returncode == 0, res.stderr
    assert set(assert_complete(run).values()) == {"done"}


def test_read_only_store_and_folder(tmp_path, stub_server):
    inp = write_prompts(tmp_path / "in.jsonl", ["one?", "two?"])
    with tmpfs(tmp_path / "disk", "16m") as disk:
        run = disk / "run"
        assert cai_run("run", inp, "--out", run, *stub_args(stub_server)).returncode == 0
        remount(disk, "ro")
        listing = sorted(p.name for p in run.iterdir())
        status = cai_run("status", run)
        assert status.returncode == 0 and "2 done" in status.stderr, status.stderr
        assert sorted(p.name for p in run.iterdir()) == listing
        for cmd in (["export", run], ["run", inp, "--out", run, *stub_args(stub_server)],
                    ["run", inp, "--out", disk / "new", *stub_args(stub_server)]):
            res = cai_run(*cmd)
            assert res.returncode == 2, res.stderr
            assert str(disk) in one_line_error(res.stderr)


def test_damaged_store_is_named_and_never_written(tmp_path, stub_server):
    inp = write_prompts(tmp_path / "in.jsonl", ["one?"])
    content = b"this is not a database" * 100  # an empty file is a run with nothing stored yet (test_store_create)
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.sqlite").write_bytes(content)
    for cmd in (["status", run], ["export", run], ["run", inp, "--out", run, *stub_args(stub_server)],
                ["rbr", "metrics", run], ["rbr", "grade", run]):
        res = cai_run(*cmd)
        assert res.returncode == 2, (cmd, res.stderr)
        line = one_line_error(res.stderr)
        assert "not a cai run" in line or "damaged store" in line, line
    assert (run / "run.sqlite").read_bytes() == content
    assert sorted(p.name for p in run.iterdir()) == ["run.sqlite"]
    assert stub_server.count() == 0
    with sqlite3.connect(tmp_path / "other.sqlite") as db:  # a SQLite file that is not a cai store
        db.execute("CREATE TABLE t(x)")
    (tmp_path / "foreign").mkdir()
    (tmp_path / "other.sqlite").rename(tmp_path / "foreign" / "run.sqlite")
    res = cai_run("status", tmp_path / "foreign")
    assert res.returncode == 2 and "not a cai run" in one_line_error(res.stderr)
