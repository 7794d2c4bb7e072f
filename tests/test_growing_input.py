"""A growing input file (issue 20): rows appended between invocations are worked on, the old ones skipped; a
changed, shrunk or rewritten file is refused naming its first changed line, before any model call."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import sqlite3
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

import cai
from cai.core.records import InputScan, scan_input, scanned_records
from cai.errors import ConfigMismatch, InputError
from cai.runs import check_fingerprint, fingerprint
from cai.settings import IOSettings, RunSettings
from cai.store import Store
from helpers import cai as cli
from helpers import read_jsonl
from reliability import KEY, cai_proc, one_line_error, stub_args

CALLS = 5  # per record: a draft, then a critique and a revision in each of 2 rounds


def rows(fmt: str, prompts: list[str], start: int = 0, header: bool = True) -> str:
    """`prompts` as lines of a .jsonl, .txt or .csv file (ids p<start>, p<start+1>, … where the format has ids)."""
    if fmt == "txt":
        return "".join(f"{p}\n" for p in prompts)
    if fmt == "jsonl":
        return "".join(json.dumps({"id": f"p{start + i}", "prompt": p}) + "\n" for i, p in enumerate(prompts))
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    if header:
        w.writerow(["id", "prompt"])
    w.writerows([f"p{start + i}", p] for i, p in enumerate(prompts))
    return buf.getvalue()


def run(srv, inp: Path, out: Path, *extra: str):
    return cli("run", inp, "--out", out, *stub_args(srv), *extra, env={"OPENAI_API_KEY": KEY})


def drafted(srv, since: int, prompts: list[str]) -> set[str]:
    """The prompts among `prompts` whose draft was requested since request number `since`."""
    return {m[-1]["content"] for r in srv.requests[since:] if isinstance(r["body"], dict)
            for m in [r["body"].get("messages") or [{}]]} & set(prompts)


def stored_input(out: Path) -> tuple:
    """The run's stored fingerprint and line hashes."""
    with contextlib.closing(sqlite3.connect(f"{(out / 'run.sqlite').as_uri()}?mode=ro", uri=True)) as db:
        return (db.execute("SELECT value FROM meta WHERE key='fingerprint'").fetchone(),
                db.execute("SELECT * FROM input_lines ORDER BY n").fetchall())


def manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


OLD = ["What is a lighthouse?", "Name three rivers.", "Why is the sky blue?"]
NEW = ["How do bees talk?", "What is a comet made of?"]


@pytest.mark.parametrize("fmt", ["jsonl", "txt", "csv"])
def test_appended_rows_are_worked_on_and_the_old_ones_skipped(tmp_path, stub_server, fmt):
    inp, out = tmp_path / f"in.{fmt}", tmp_path / "r"
    inp.write_text(rows(fmt, OLD))
    assert run(stub_server, inp, out).exit_code == 0
    assert stub_server.count() == 3 * CALLS
    assert manifest(out)["input"]["records_added"] == 3  # a new run: every record is new to it
    with inp.open("a") as fh:
        fh.write(rows(fmt, NEW, start=3, header=False))
    res = run(stub_server, inp, out, "--json")
    assert res.exit_code == 0, res.stderr
    assert stub_server.count() == 5 * CALLS  # only the two new records' calls
    assert drafted(stub_server, 3 * CALLS, OLD + NEW) == set(NEW)
    assert json.loads(res.stdout)["this_invocation"]["skipped"] == 3
    info = manifest(out)["input"]
    assert (info["records"], info["records_added"], info["bytes"]) == (5, 2, inp.stat().st_size)
    assert [m["content"] for r in read_jsonl(out / "sft.jsonl") for m in r["messages"][:1]] == OLD + NEW
    assert run(stub_server, inp, out).exit_code == 0  # unchanged since: nothing to do
    assert stub_server.count() == 5 * CALLS and manifest(out)["input"]["records_added"] == 0


@pytest.mark.parametrize("fmt, line", [("jsonl", 2), ("txt", 2), ("csv", 3)])  # csv: line 1 is the header
def test_a_changed_row_is_refused_naming_its_line_before_any_call(tmp_path, stub_server, fmt, line):
    inp, out = tmp_path / f"in.{fmt}", tmp_path / "r"
    inp.write_text(rows(fmt, OLD))
    assert run(stub_server, inp, out).exit_code == 0
    sent, stored = stub_server.count(), stored_input(out)
    inp.write_text(rows(fmt, [OLD[0], "Name four rivers.", OLD[2], *NEW]))  # row 2 edited, rows appended
    res = run(stub_server, inp, out)
    assert res.exit_code == 2
    assert one_line_error(res.stderr).startswith(f"error: {inp}:{line}: this row changed since the run read it (")
    assert "--restart" in res.stderr
    assert stub_server.count() == sent and stored_input(out) == stored  # nothing written
    inp.write_text(rows(fmt, OLD + NEW))  # put back, the appended rows kept: the run goes on
    assert run(stub_server, inp, out).exit_code == 0
    assert stub_server.count() == sent + 2 * CALLS


def test_a_shrunk_file_is_refused_naming_the_first_missing_line(tmp_path, stub_server):
    inp, out = tmp_path / "in.jsonl", tmp_path / "r"
    inp.write_text(rows("jsonl", OLD))
    assert run(stub_server, inp, out).exit_code == 0
    sent = stub_server.count()
    inp.write_text(rows("jsonl", OLD[:1]))
    res = run(stub_server, inp, out)
    assert res.exit_code == 2 and stub_server.count() == sent
    assert one_line_error(res.stderr).startswith(
        f"error: {inp}:2: this row is gone: the file now ends at line 1, it had 3 lines when the run read it (")


def test_a_last_line_without_newline_may_get_one_then_rows(tmp_path, stub_server):
    inp, out = tmp_path / "in.jsonl", tmp_path / "r"
    inp.write_text(rows("jsonl", OLD).rstrip("\n"))
    assert run(stub_server, inp, out).exit_code == 0
    with inp.open("a") as fh:
        fh.write("\n" + rows("jsonl", NEW, start=3))
    assert run(stub_server, inp, out).exit_code == 0, "the last row is unchanged: only its newline came"
    assert stub_server.count() == 5 * CALLS
    assert manifest(out)["input"]["records_added"] == 2


def test_a_last_line_without_newline_that_is_extended_has_changed(tmp_path, stub_server):
    inp, out = tmp_path / "in.txt", tmp_path / "r"
    inp.write_text("first?\nsecond?")
    assert run(stub_server, inp, out).exit_code == 0
    sent = stub_server.count()
    with inp.open("a") as fh:
        fh.write(" and more\nthird?\n")  # the second prompt is now "second? and more"
    res = run(stub_server, inp, out)
    assert res.exit_code == 2 and stub_server.count() == sent
    assert one_line_error(res.stderr).startswith(f"error: {inp}:2: this row changed")


def test_a_growing_file_with_limit_keeps_the_limit(tmp_path, stub_server):
    inp, out = tmp_path / "in.jsonl", tmp_path / "r"
    inp.write_text(rows("jsonl", OLD))
    assert run(stub_server, inp, out, "--limit", "2").exit_code == 0
    assert stub_server.count() == 2 * CALLS
    with inp.open("a") as fh:
        fh.write(rows("jsonl", NEW, start=3))
    assert run(stub_server, inp, out, "--limit", "2").exit_code == 0  # the first two records: done already
    assert stub_server.count() == 2 * CALLS
    info = manifest(out)["input"]
    assert (info["records"], info["records_added"]) == (2, 0)
    assert run(stub_server, inp, out, "--limit", "4").exit_code == 0
    assert drafted(stub_server, 2 * CALLS, OLD + NEW) == {OLD[2], NEW[0]}
    assert run(stub_server, inp, out).exit_code == 0
    assert stub_server.count() == 5 * CALLS


def test_the_library_behaves_the_same(tmp_path, stub_server, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    opts = {"out": tmp_path / "r", "model": "openai:stub", "base_url": stub_server.url, "rounds": 2,
            "max_tokens": 16, "max_retries": 2}
    inp = tmp_path / "in.jsonl"
    inp.write_text(rows("jsonl", OLD))
    assert cai.run(inp, **opts).invocation["calls"] == 3 * CALLS
    with inp.open("a") as fh:
        fh.write(rows("jsonl", NEW, start=3))
    r = cai.run(str(inp), **opts)
    assert (r.invocation["calls"], r.invocation["done"], r.invocation["skipped"]) == (2 * CALLS, 2, 3)
    assert r.manifest["input"]["records_added"] == 2
    inp.write_text(rows("jsonl", ["Changed?", *OLD[1:], *NEW]))
    with pytest.raises(ConfigMismatch) as e:
        cai.run(inp, **opts)
    assert (e.value.path, e.value.line, e.value.exit_code) == (str(inp), 1, 2)
    assert stub_server.count() == 5 * CALLS


def as_older_version(out: Path) -> None:
    """Make the run look as a version before growing inputs left it: a fingerprint with only `input_sha256`,
    no line hashes, and no record of migrations (that version kept none)."""
    with contextlib.closing(sqlite3.connect(out / "run.sqlite")) as db, db:
        fp = json.loads(db.execute("SELECT value FROM meta WHERE key='fingerprint'").fetchone()[0])
        for key in ("input_bytes", "input_lines"):
            del fp[key]
        db.execute("UPDATE meta SET value=? WHERE key='fingerprint'", (json.dumps(fp, sort_keys=True),))
        db.execute("DROP TABLE input_lines")
        db.execute("DROP TABLE _migrations")


def test_an_older_run_resumes_an_unchanged_file_then_may_grow(tmp_path, stub_server):
    inp, out = tmp_path / "in.jsonl", tmp_path / "r"
    inp.write_text(rows("jsonl", OLD))
    assert run(stub_server, inp, out).exit_code == 0
    as_older_version(out)
    assert run(stub_server, inp, out).exit_code == 0
    assert stub_server.count() == 3 * CALLS
    with inp.open("a") as fh:  # its line hashes were kept on that resume, so it may grow from now on
        fh.write(rows("jsonl", NEW, start=3))
    assert run(stub_server, inp, out).exit_code == 0
    assert stub_server.count() == 5 * CALLS


def test_an_older_run_with_a_changed_file_is_refused_as_before(tmp_path, stub_server):
    inp, out = tmp_path / "in.jsonl", tmp_path / "r"
    inp.write_text(rows("jsonl", OLD))
    assert run(stub_server, inp, out).exit_code == 0
    as_older_version(out)
    with inp.open("a") as fh:
        fh.write(rows("jsonl", NEW, start=3))
    res = run(stub_server, inp, out)
    assert res.exit_code == 2 and stub_server.count() == 3 * CALLS
    assert one_line_error(res.stderr).startswith(f"error: {out}: this run was made with input_sha256=")


# -- the check itself, without a model -----------------------------------------------------------------
IO = IOSettings(input="x", out="y")


def input_fp(path: Path, const: str = "c" * 64, models: dict[str, Any] | None = None,
             scan: InputScan | None = None) -> dict[str, Any]:
    """The fingerprint of a run over `path` (as scanned now, or by `scan`) with constitution hash `const`."""
    scan = scan or scan_input(path)
    return fingerprint(RunSettings(io=IO), {"generator": {}} if models is None else models, const, scan.sha256,
                       input_bytes=scan.bytes, input_lines=scan.lines)


def check(store: Store, path: Path) -> int:
    scan = scan_input(path)
    return check_fingerprint(store, input_fp(path, scan=scan), RunSettings(io=IO), scan)


def test_a_file_that_lost_its_last_newline_is_unchanged(tmp_path):
    inp = tmp_path / "in.txt"
    inp.write_bytes(b"a?\nb?\n")
    store = Store(tmp_path)
    try:
        assert check(store, inp) == 0
        inp.write_bytes(b"a?\nb?")  # no row changed
        assert check(store, inp) == 2
        inp.write_bytes(b"a?\nb?!\n")
        with pytest.raises(ConfigMismatch, match="this row changed"):
            check(store, inp)
        inp.write_bytes(b"a?\r\nb?\n")  # a line ending is part of the row's bytes
        with pytest.raises(ConfigMismatch) as e:
            check(store, inp)
        assert e.value.line == 1
    finally:
        store.close()


def test_other_settings_are_still_compared_first(tmp_path):
    inp = tmp_path / "in.txt"
    inp.write_bytes(b"a?\n")
    store = Store(tmp_path)
    try:
        check(store, inp)
        inp.write_bytes(b"changed?\n")
        with pytest.raises(ConfigMismatch, match="was made with constitution_sha256="):
            check_fingerprint(store, input_fp(inp, "d" * 64), RunSettings(io=IO), scan_input(inp))
    finally:
        store.close()


def test_a_file_changed_after_it_was_scanned_is_refused_before_its_rows_are_worked_on(tmp_path):
    """The run works on the records it validated: the pipeline's read checks every line against the scan's hash,
    so a row rewritten in between is refused (naming its line) before it reaches a model."""
    inp = tmp_path / "in.txt"
    inp.write_bytes(b"a?\nb?\n")
    scan = scan_input(inp)
    inp.write_bytes(b"a?\nB?\n")  # rewritten between validation and the run's read
    seen = []
    with pytest.raises(InputError, match="changed while cai read it") as e:
        seen.extend(r.messages[-1]["content"] for r in scanned_records(scan))
    assert seen == ["a?"] and e.value.line == 2


def test_rows_appended_after_the_scan_are_not_read(tmp_path):
    inp = tmp_path / "in.csv"
    inp.write_text(rows("csv", OLD))
    scan = scan_input(inp)
    with inp.open("a") as fh:
        fh.write('p9,"half a row\n')  # a row still being written
    assert [r.id for r in scanned_records(scan)] == ["p0", "p1", "p2"]


def test_a_large_file_is_checked_as_a_stream(tmp_path):
    """20,000 lines of ~200 bytes (about 4 MB): the check holds neither the file nor another copy of its line
    hashes (the scan keeps 8 bytes a line)."""
    inp = tmp_path / "in.jsonl"
    pad = "x" * 160
    inp.write_text(rows("jsonl", [f"prompt {i} {pad}?" for i in range(20_000)]))
    store = Store(tmp_path)
    try:
        check(store, inp)
        with inp.open("a") as fh:
            fh.write(rows("jsonl", ["one more?"], start=20_000))
        scan = scan_input(inp)  # validation keeps the ids (duplicates are refused) and 8 bytes a line
        fp = input_fp(inp, scan=scan)
        tracemalloc.start()
        try:
            assert check_fingerprint(store, fp, RunSettings(io=IO), scan) == 20_000
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < 1_000_000, peak
        text = inp.read_text().replace("prompt 15000 ", "prompt 15000! ")
        inp.write_text(text)
        with pytest.raises(ConfigMismatch) as e:
            check(store, inp)
        assert e.value.line == 15_001
    finally:
        store.close()


def test_rows_appended_while_a_run_runs_wait_for_the_next_invocation(tmp_path, stub_server):
    """The run works on the records it validated; a row appended mid-run (unchecked, maybe half-written when
    the run read it) is left for the next invocation, which checks it as a grown file."""
    inp = tmp_path / "in.txt"
    inp.write_text(rows("txt", OLD))
    stub_server.hold_after(1)
    # One record in flight, so the run still has input lines to read when the row is appended.
    proc = cai_proc("run", inp, "--out", tmp_path / "r", *stub_args(stub_server), "--json", "--concurrency", "1")
    stub_server.wait_for_requests(2, until=lambda: proc.poll() is not None)
    with inp.open("a") as fh:
        fh.write(rows("txt", NEW[:1]))
    stub_server.resume()
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    first = json.loads(out)
    assert first["records"]["done"] == len(OLD) and drafted(stub_server, 0, NEW) == set()
    sent = len(stub_server.requests)
    again = run(stub_server, inp, tmp_path / "r")
    assert again.exit_code == 0, again.stderr
    assert drafted(stub_server, sent, NEW + OLD) == {NEW[0]} and len(stub_server.requests) - sent == CALLS
