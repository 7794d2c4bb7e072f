"""The call cache shared across runs (`--cache PATH` / `cache=`): keyed like a run's own calls, off by
default, counted in the manifest, never failing a run, and used by `cai rbr grade` too."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sqlite3
from pathlib import Path

import pytest

import cai as lib
from cai.calls import Completion
from cai.providers.local import LocalModel
from cai.store.callcache import CallCache
from helpers import cai, write_prompts
from reliability import KEY, cai_proc, one_line_error, stub_args, tmpfs

ENV = {"OPENAI_API_KEY": KEY}
PROMPTS = [f"question number {i}?" for i in range(4)]


def manifest(run: Path) -> dict:
    return json.loads((run / "manifest.json").read_text())


def run_with(tmp_path: Path, srv, name: str, *extra: str) -> dict:
    inp = tmp_path / "in.jsonl"
    if not inp.exists():
        write_prompts(inp, PROMPTS)
    res = cai("run", inp, "--out", tmp_path / name, *stub_args(srv), "--rounds", "1", "--json", *extra, env=ENV)
    assert res.exit_code == 0, res.stderr
    printed = json.loads(res.stdout)  # manifest.json plus this invocation's counts
    assert {k: v for k, v in printed.items() if k not in ("this_invocation", "out")} == manifest(tmp_path / name)
    return printed


def test_a_second_constitution_reuses_the_drafts_and_pays_only_for_the_rest(tmp_path, stub_server):
    cache = tmp_path / "shared" / "calls.sqlite"
    first = run_with(tmp_path, stub_server, "a", "--cache", str(cache))
    assert first["call_cache"]["hits"] == 0 and first["this_invocation"]["shared_cache_hits"] == 0
    sent_before = stub_server.count()
    second = run_with(tmp_path, stub_server, "b", "--cache", str(cache), "--constitution", "model-spec")
    sent = stub_server.count() - sent_before
    # Every draft came from the cache: the generator paid for nothing, the critic and reviser for all.
    assert second["call_cache"]["hits"] == len(PROMPTS) == second["this_invocation"]["shared_cache_hits"]
    assert "generator" not in second["tokens"]
    assert second["call_cache"]["tokens"]["generator"]["calls"] == len(PROMPTS)
    assert sent == sum(t["calls"] for t in second["tokens"].values()) == second["this_invocation"]["calls"]
    assert second["call_cache"]["path"] == str(cache)
    # The drafts are the same answers; the run keeps them in its own store (marked shared).
    drafts = {json.loads(line)["id"]: json.loads(line)["rejected"] for line in (tmp_path / "b" / "pairs.jsonl").open()}
    first_drafts = {json.loads(line)["id"]: json.loads(line)["rejected"]
                    for line in (tmp_path / "a" / "pairs.jsonl").open()}
    assert drafts and all(drafts[k] == first_drafts[k] for k in drafts.keys() & first_drafts.keys())
    calls = lib.open_run(tmp_path / "b").calls()
    assert calls[calls.shared]["role"].tolist() == ["generator"] * len(PROMPTS)


def test_off_by_default_and_keyed_on_what_changes_the_output(tmp_path, stub_server):
    plain = run_with(tmp_path, stub_server, "plain")
    assert plain["call_cache"] == {"path": None, "hits": 0, "tokens": {}}
    assert not list(tmp_path.glob("**/*cache*"))
    cache = tmp_path / "calls.sqlite"
    run_with(tmp_path, stub_server, "a", "--cache", str(cache))
    other = run_with(tmp_path, stub_server, "b", "--cache", str(cache), "--temperature", "0.3")
    assert other["call_cache"]["hits"] == 0  # another temperature is another request
    same = run_with(tmp_path, stub_server, "c", "--cache", str(cache), "--concurrency", "2", "--timeout", "9")
    assert same["call_cache"]["hits"] == same["this_invocation"]["shared_cache_hits"] > 0
    assert same["this_invocation"]["calls"] == 0  # concurrency and timeout do not change an answer


def test_the_library_takes_cache_too(tmp_path, stub_server, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    opts = {"model": "openai:stub", "base_url": stub_server.url, "rounds": 1, "max_tokens": 16,
            "cache": tmp_path / "c.sqlite"}
    lib.run(PROMPTS, out=tmp_path / "x", **opts)
    again = lib.run(PROMPTS, out=tmp_path / "y", **opts)
    assert again.invocation["calls"] == 0 and again.invocation["shared_cache_hits"] > 0
    assert again.manifest["call_cache"]["hits"] == again.invocation["shared_cache_hits"]


@pytest.mark.parametrize("kind", ["text", "other-sqlite", "folder"])
def test_a_bad_cache_file_is_one_line_exit_2_before_the_run_folder(tmp_path, stub_server, kind):
    bad = tmp_path / "bad.sqlite"
    if kind == "text":
        bad.write_text("not a database at all, just some text that is long enough to be read" * 20)
    elif kind == "other-sqlite":
        with sqlite3.connect(bad) as db:
            db.execute("CREATE TABLE notes(x)")
    else:
        bad.mkdir()
    inp = write_prompts(tmp_path / "in.jsonl", PROMPTS)
    res = cai("run", inp, "--out", tmp_path / "r", *stub_args(stub_server), "--cache", str(bad), env=ENV)
    assert res.exit_code == 2
    assert str(bad) in one_line_error(res.stderr)
    assert not (tmp_path / "r").exists() and stub_server.count() == 0


def test_a_cache_that_cannot_be_written_never_fails_the_run(tmp_path, stub_server):
    """The cache's filesystem fills up mid-run: the run completes, says so in one warning line and in
    this invocation's counts, and keeps every answer in its own store."""
    inp = write_prompts(tmp_path / "in.jsonl", PROMPTS)
    with tmpfs(tmp_path / "small", "256k") as mnt:
        cache = mnt / "calls.sqlite"
        stub_server.hold_after(2)
        proc = cai_proc("run", inp, "--out", tmp_path / "r", *stub_args(stub_server), "--rounds", "1",
                        "--json", "--cache", cache)
        stub_server.wait_for_requests(3, until=lambda: proc.poll() is not None)
        fd = os.open(mnt / "filler", os.O_WRONLY | os.O_CREAT)
        try:  # fill the filesystem to the last block while the run waits for an answer
            while os.write(fd, b"\0" * 4096):
                pass
        except OSError:
            pass
        finally:
            os.close(fd)
        stub_server.resume()
        out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    report = json.loads(out)["this_invocation"]["call_cache"]
    assert report["failed"] and str(cache) in report["failed"]
    assert "warning: stopped writing the call cache" in err and "Traceback" not in err
    assert json.loads(out)["records"]["done"] == len(PROMPTS)


def test_processes_share_one_cache_file(tmp_path, stub_server):
    cache = tmp_path / "calls.sqlite"
    procs = []
    for i in range(3):
        inp = write_prompts(tmp_path / f"in{i}.jsonl", [f"process {i} question {j}?" for j in range(3)])
        procs.append(cai_proc("run", inp, "--out", tmp_path / f"r{i}", *stub_args(stub_server),
                              "--rounds", "1", "--cache", cache))
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err
    paid = sum(sum(t["calls"] for t in manifest(tmp_path / f"r{i}")["tokens"].values()) for i in range(3))
    cc = CallCache(cache)
    try:
        assert len(cc) == paid == stub_server.count()
    finally:
        cc.close()


def test_the_first_answer_for_a_key_is_kept(tmp_path):
    cc = CallCache(tmp_path / "c.sqlite")
    try:
        cc.put("k", "openai:m", Completion(text="first"))
        cc.put("k", "openai:m", Completion(text="second"))
        assert cc.get("k") == Completion(text="first") and cc.get("missing") is None
        assert (cc.hits, cc.stored, len(cc)) == (1, 2, 1)
    finally:
        cc.close()


def test_the_local_identity_is_the_file_content(tmp_path):
    a = tmp_path / "a.gguf"
    a.write_bytes(b"GGUF" + bytes(range(256)) * 64)
    renamed = tmp_path / "sub" / "renamed.gguf"
    renamed.parent.mkdir()
    shutil.copy(a, renamed)
    edited = tmp_path / "edited.gguf"
    edited.write_bytes(a.read_bytes()[:-1] + b"\x01")  # same name length, same size, one byte differs
    ident = LocalModel(str(a)).identity()
    assert ident == LocalModel(str(renamed)).identity()
    assert ident != LocalModel(str(edited)).identity()
    assert set(ident) == {"provider", "sha256"} and str(a) not in json.dumps(ident)


def test_rbr_grade_shares_the_cache_and_takes_the_run_lock(tmp_path, stub_server):
    from cai.store.lock import RunLock

    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"id": f"r{i}", "prompt": f"q{i}?", "response": f"answer {i}"}) + "\n"
                            for i in range(2)))
    args = ["rbr", "grade", rows, "--grader", "openai:stub", "--base-url", stub_server.url, "--quiet",
            "--json", "--cache", tmp_path / "c.sqlite"]
    first = cai(*args, "--out", tmp_path / "g1", env=ENV)
    assert first.exit_code == 0, first.stderr
    sent = stub_server.count()
    second = cai(*args, "--out", tmp_path / "g2", env=ENV)
    assert second.exit_code == 0, second.stderr
    stats = json.loads(second.stdout)
    assert stub_server.count() == sent and stats["calls_made"] == 0 and stats["calls_shared"] > 0
    with RunLock(tmp_path / "g2"):
        proc = cai_proc(*args, "--out", tmp_path / "g2")
        _, err = proc.communicate(timeout=600)
    assert proc.returncode == 3, err
    assert "g2" in one_line_error(err)


def test_a_store_from_before_the_cache_reads_and_upgrades(tmp_path):
    from cai.store import Store

    store = Store(tmp_path)
    store.add_call("k", "generator", "openai:m", Completion(text="hi", tokens_in=3, tokens_out=1))
    asyncio.run(store.flush())
    store.close()
    with sqlite3.connect(tmp_path / "run.sqlite") as db:  # as a version without the shared cache wrote it
        db.execute("ALTER TABLE calls DROP COLUMN shared")
        db.execute("DROP TABLE _migrations")  # that version recorded no migrations
    old = Store.open_run(tmp_path, readonly=True)
    try:
        assert [row[-1] for row in old.read_calls()] == [0]
        assert old.token_totals() == {"generator": {"calls": 1, "tokens_in": 3, "tokens_out": 1, "tokens_cached": 0,
                                                    "tokens_cache_write": 0}}
        assert old.token_totals(shared=True) == {}
    finally:
        old.close()
    Store.open_run(tmp_path).close()  # a writable open adds the column
    with sqlite3.connect(tmp_path / "run.sqlite") as db:
        assert "shared" in {r[1] for r in db.execute("PRAGMA table_info(calls)")}
