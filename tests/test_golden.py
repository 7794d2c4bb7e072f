"""Golden outputs: seeded runs of today's code against the loopback stubs write, byte for byte, the exports recorded
in tests/data/golden/ (sft, pairs, critiques, labels, the manifest and the Hugging Face card normalized by
tests/golden.py, the Parquet files); the run stores recorded there resume (a finished one with no model call, one
with a failed record paying only for what it lacks) and export the same bytes; the recorded call cache answers
every call of the same run. Behaviour must not change while the code is reorganized: re-record
(tests/data/golden/make.py) only for a change that is meant, and review the diff."""

from __future__ import annotations

import contextlib
import difflib
import importlib.util
import json
import shutil
import sqlite3
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from golden import (
    CALL_CACHE,
    CASES,
    FAILED_STORE,
    GOLDEN,
    JSONL,
    MAKE,
    OLD_STORE,
    Case,
    cli,
    copy_inputs,
    files,
    normalize_manifest,
    old_store_server,
    produce,
    run_args,
)

NO_RAY = importlib.util.find_spec("ray") is None


def cases() -> list:
    """Every case; the Ray one skipped when ray is not importable, as tests/test_ray.py is."""
    return [pytest.param(case, id=name, marks=[pytest.mark.skipif(
        NO_RAY, reason="ray is not importable (pip install 'cai[ray]')")] if case.ray else [])
        for name, case in CASES.items()]


def parquet_difference(recorded: Path, fresh: Path) -> str | None:
    """How two Parquet files differ, or None. The bytes must be equal when the same pyarrow wrote both; a
    different pyarrow writes other bytes for the same data, so then the schema (with its metadata), the rows
    and the row groups must be."""
    if recorded.read_bytes() == fresh.read_bytes():
        return None
    old, new = pq.ParquetFile(recorded), pq.ParquetFile(fresh)
    if not old.schema_arrow.equals(new.schema_arrow, check_metadata=True):
        return f"schema differs:\n{old.schema_arrow}\n--- now ---\n{new.schema_arrow}"
    if not old.read().equals(new.read()):
        return f"rows differ:\n{old.read().to_pylist()}\n--- now ---\n{new.read().to_pylist()}"
    groups = [[f.metadata.row_group(i).num_rows for i in range(f.metadata.num_row_groups)] for f in (old, new)]
    if groups[0] != groups[1]:
        return f"row groups differ: {groups[0]} rows, now {groups[1]}"
    if old.metadata.created_by == new.metadata.created_by:
        return f"bytes differ for the same data, written by the same {new.metadata.created_by}"
    return None


def text_difference(recorded: Path, fresh: Path) -> str | None:
    """A unified diff (at most 60 lines) of two text files, or None if their bytes are equal."""
    if recorded.read_bytes() == fresh.read_bytes():
        return None
    diff = difflib.unified_diff(recorded.read_text(encoding="utf-8").splitlines(),
                                fresh.read_text(encoding="utf-8").splitlines(), "recorded", "now", lineterm="")
    return "\n".join(list(diff)[:60])


def differences(recorded: Path, fresh: Path) -> list[str]:
    """Each file that is missing, extra or different in `fresh` compared with `recorded`, with how."""
    old, new = files(recorded), files(fresh)
    out = [f"{name}: recorded, not written now" for name in sorted(old.keys() - new.keys())]
    out += [f"{name}: written now, not recorded" for name in sorted(new.keys() - old.keys())]
    for name in sorted(old.keys() & new.keys()):
        compare = parquet_difference if name.endswith(".parquet") else text_difference
        problem = compare(old[name], new[name])
        if problem:
            out.append(f"{name}: {problem}")
    return out


def failure(case: str, problems: list[str]) -> str:
    return (f"the {case} case's exports differ from tests/data/golden/{case}/:\n" + "\n".join(problems)
            + f"\nBehaviour must not change. Only if this change is intended, record them again with `{MAKE} {case}`"
            " and review the diff.")


@pytest.mark.parametrize("case", cases())
def test_exports_equal_the_recorded_ones(case: Case, tmp_path: Path) -> None:
    produce(case, tmp_path / "work", tmp_path / "out")
    problems = differences(GOLDEN / case.name, tmp_path / "out")
    assert not problems, failure(case.name, problems)


def exports_of(run: Path) -> dict[str, bytes]:
    return {name: (run / f"{name}.jsonl").read_bytes() for name in JSONL if (run / f"{name}.jsonl").exists()}


def old_run(store: Path, work: Path) -> Path:
    """A run folder in `work` holding a copy of the recorded `store`, with the plain case's inputs beside it."""
    copy_inputs(work)
    run = work / CASES["plain"].name
    run.mkdir()
    shutil.copyfile(store, run / "run.sqlite")
    return run


def resume(work: Path, *extra: str) -> int:
    """The plain case's `cai run` (and `extra`) in `work` against a fresh stub on the port the old stores' runs
    used (the base URL is part of the models' identity); returns the model calls it made."""
    case = CASES["plain"]
    with old_store_server(case) as srv:
        cli("run", work / case.input, *run_args(case, work, srv), "--quiet", *extra)
        return srv.count()


def stored_calls(store: Path) -> int:
    """Model calls a recorded store holds (read, never written)."""
    with contextlib.closing(sqlite3.connect(f"{store.as_uri()}?immutable=1", uri=True)) as db:
        return db.execute("SELECT COUNT(*) FROM calls").fetchone()[0]


def test_the_recorded_store_resumes_with_no_model_call_and_exports_the_same_bytes(tmp_path: Path) -> None:
    """A finished run folder written by the recorded code: `cai export` writes the recorded exports, and the same
    command as its run, against a fresh stub, calls no model and writes them again."""
    recorded = GOLDEN / "plain"
    want = exports_of(recorded)
    assert set(want) == {"sft", "pairs", "critiques"}
    run = old_run(OLD_STORE, tmp_path)
    cli("export", run)
    assert exports_of(run) == want, failure("plain", ["`cai export` of the old store"])

    for name in want:
        (run / f"{name}.jsonl").unlink()
    assert resume(tmp_path) == 0, "resuming the finished old store called a model"
    assert exports_of(run) == want, failure("plain", ["the resumed old store's exports"])
    manifest = json.loads(normalize_manifest(json.loads((run / "manifest.json").read_text()), tmp_path))
    expected = json.loads((recorded / "manifest.json").read_text())
    # the recorded one, but for this invocation: counted, and it added no record
    assert manifest == {**expected, "invocations": expected["invocations"] + 1,
                        "input": {**expected["input"], "records_added": 0}}


def test_a_recorded_failed_record_is_retried_paying_only_for_what_it_lacked(tmp_path: Path) -> None:
    """The plain run with one record failed after its first steps were stored: --retry-failed sends exactly the
    calls the finished store has and this one lacks (no stored step is paid again), and the exports are then the
    plain case's, byte for byte."""
    run = old_run(FAILED_STORE, tmp_path)
    missing = stored_calls(OLD_STORE) - stored_calls(FAILED_STORE)
    assert missing > 0
    assert resume(tmp_path, "--retry-failed") == missing
    assert exports_of(run) == exports_of(GOLDEN / "plain"), failure("plain", ["the retried old store's exports"])


def test_a_recorded_call_cache_answers_every_call_of_the_same_run(tmp_path: Path) -> None:
    """The shared call cache (--cache) the recorded code filled: a new run of the same work takes every answer from
    it (the cache key is unchanged), pays for nothing and writes the plain case's exports."""
    copy_inputs(tmp_path)
    cache = tmp_path / "calls.sqlite"
    shutil.copyfile(CALL_CACHE, cache)
    assert resume(tmp_path, "--cache", str(cache)) == 0, "a call the recorded cache holds was paid again"
    assert exports_of(tmp_path / "plain") == exports_of(GOLDEN / "plain"), failure("plain", ["the cached run"])
