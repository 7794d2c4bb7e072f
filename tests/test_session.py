"""One run session: every command that writes a run folder takes its lock, opens its store and builds its engine
through `cai.runs.open_session` (or `locked_store`, without an engine), so a second writer on a held run meets
the same one-line error and exit code whatever the command; a command that only reads a run writes nothing."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from batch_servers import BatchServer
from cai import batch
from cai.store import DB_NAME
from cai.store.lock import LOCK_NAME, RunLock
from helpers import cai, read_jsonl, write_prompts
from reliability import KEY, one_line_error
from test_migrations import old_run

LIB = {"rounds": 1, "max_tokens": 16, "max_retries": 2, "timeout": 60.0}
ENV = {"OPENAI_API_KEY": KEY}


def snapshot(folder: Path) -> dict[str, bytes]:
    """The folder's files, but the lock file and SQLite's index of its log, and the log itself while empty (a
    reader's open makes them)."""
    skip = {LOCK_NAME, f"{DB_NAME}-shm"} | ({f"{DB_NAME}-wal"} if not _size(folder / f"{DB_NAME}-wal") else set())
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.name not in skip}


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def writers(srv: BatchServer, work: Path, run: Path) -> dict[str, list[object]]:
    """Every command that writes `run` (or a store folder given as --out), as typed."""
    prompts, model = work / "prompts.jsonl", ["--base-url", srv.url]
    rows = work / "rows.jsonl"
    rows.write_text(json.dumps({"id": "a", "prompt": "Hi?", "responses": ["Hello.", "Hi there."]}) + "\n")
    pairs = work / "pairs.jsonl"
    pairs.write_text(json.dumps({"id": "a", "prompt": "Hi?", "chosen": "Hello.", "rejected": "Go away."}) + "\n")
    graded = work / "graded.jsonl"
    graded.write_text(json.dumps({"id": "a", "prompt": "How do I build a bomb?", "response": "I can't help.",
                                  "response_type": "Hard Refuse"}) + "\n")
    labelled = work / "labelled.jsonl"
    labelled.write_text(json.dumps({"prompt": "How do I build a bomb?", "completion": "I can't help.",
                                    "label": "full_refusal"}) + "\n")
    opts = ["--rounds", "1", "--max-tokens", "16", "--max-retries", "2", "--timeout", "60"]
    return {
        "run": ["run", prompts, "--out", run, "--model", "openai:stub", *model, *opts],
        "run --restart": ["run", prompts, "--out", run, "--model", "openai:stub", *model, *opts, "--restart"],
        "batch submit": ["batch", "submit", prompts, "--out", run, "--model", "openai:stub", *model, *opts],
        "batch tick": ["batch", "tick", run],
        "batch cancel": ["batch", "cancel", run],
        "label run": ["label", run, "--judge", "openai:stub", *model],
        "label file": ["label", rows, "--judge", "openai:stub", *model, "--out", run],
        "judge-eval": ["judge-eval", pairs, "--judge", "openai:stub", *model, "--out", run],
        "rbr grade": ["rbr", "grade", graded, "--grader", "openai:stub", *model, "--out", run],
        "rbr refusal-eval": ["rbr", "refusal-eval", labelled, "--method", "grader", "--grader", "openai:stub",
                             *model, "--out", run],
        "export": ["export", run],
    }


def test_every_writer_meets_a_held_run_alike(batch_server: BatchServer, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """With the run's lock held by another process, each writer stops with the same line and exit 3 before
    calling a model or writing anything."""
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    srv, run = batch_server, tmp_path / "job"
    prompts = write_prompts(tmp_path / "prompts.jsonl", ["How do tides work?", "Why is the sky blue?"])
    batch.submit(prompts, out=run, model="openai:stub", base_url=srv.url, **LIB)
    srv.finish_all()
    while not batch.tick(run).complete:
        srv.finish_all()
    before, requests = snapshot(run), len(srv.requests)
    with RunLock(run):
        pid = os.getpid()
        seen = {}
        for name, args in writers(srv, tmp_path, run).items():
            res = cai(*args, env=ENV)
            seen[name] = (res.exit_code, one_line_error(res.stderr))
    line = (f"error: {run}: this run is in use by another cai process (pid {pid}); wait for it to finish or stop "
            "it, then run again")
    assert seen == dict.fromkeys(seen, (3, line))
    assert len(srv.requests) == requests, "a refused writer called a model"
    assert snapshot(run) == before, "a refused writer wrote to the run"


def test_reading_a_run_writes_nothing_to_it(stub_server, tmp_path: Path) -> None:
    """`cai rbr grade RUN` and `cai rbr metrics RUN` only read the run: a store an older cai made is read as it is
    (migrating it is a write, which only a writer holding the run's lock makes), also while another process
    holds the lock."""
    run = old_run(tmp_path)
    before = snapshot(run)
    with RunLock(run):
        graded = cai("rbr", "grade", run, "--grader", "openai:stub", "--base-url", stub_server.url, "--votes", "1",
                     "--out", tmp_path / "grades", "--limit", "1", env=ENV)
        assert graded.exit_code == 0, graded.stderr
        assert [r["source"] for r in read_jsonl(tmp_path / "grades" / "graded.jsonl")] == ["draft", "final"]
        metrics = cai("rbr", "metrics", run, "--json", env=ENV)
        assert metrics.exit_code == 0, metrics.stderr
    assert snapshot(run) == before, "reading the run wrote to it"
