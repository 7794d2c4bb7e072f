"""Exports built from a store written directly: JSONL bytes, TRL-shaped Parquet, file modes, stale and temp
files, disk-full and other OS errors, developer turns as system turns."""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import datasets
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cai.errors import OutputError
from cai.read.export import EXPORTS, export, export_run
from cai.settings import RunSettings
from cai.store import Store
from helpers import cai

MESSAGE_LIST = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
PROMPT = [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "Où est la gare ?"}]


def make_run(run_dir: Path, n: int = 3, *, settings: dict[str, Any] | None = None, rbr: bool = False,
             messages: list[dict[str, str]] | None = None, words: int = 6, seed: int = 0) -> Path:
    """A run folder whose store holds `n` finished records (draft, critique, revision), written directly."""
    rng = random.Random(seed)

    def text() -> str:
        return " ".join("".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=rng.randint(2, 9))) for _ in range(words))

    run_dir.mkdir(parents=True, exist_ok=True)
    store = Store(run_dir)
    try:
        store.set_meta("settings", RunSettings.from_options(input="in.jsonl", out=run_dir, rbr=rbr,
                                                            **(settings or {})).model_dump())
        for i in range(n):
            rid = f"r{i}"
            draft, final = f"draft {i}: {text()}", f"final {i}: {text()}"
            store.add_record(i, rid, messages or [{"role": "user", "content": f"question {i}?"}], {})
            store.add_step(rid, 0, "draft", 0, {"response": draft})
            if rbr:
                store.add_step(rid, 1, "grade", 0, {"score": {"reward": 0.25}})
            verdict = {"critique": f"too vague {i}", "violates": True, "severity": 2} if i % 2 == 0 else None
            store.add_step(rid, 2, "critique", 1, {"principle": "be-specific", "response": draft, "raw": "x",
                                                   "repaired": False, "parsed": verdict is not None,
                                                   "verdict": verdict, "critique": f"too vague {i}"})
            store.add_step(rid, 3, "revise", 1, {"principle": "be-specific", "before": draft, "response": final,
                                                 "empty": False, "feedback": None}, status=None if rbr else "done")
            if rbr:
                store.add_step(rid, 4, "grade", 1, {"score": {"reward": 0.75}}, status="done")
    finally:
        store.close()
    return run_dir


def run_export(run_dir: Path, fmt: str = "jsonl", **kw: Any) -> dict[str, Any]:
    store = Store.open_run(run_dir)
    try:
        return export_run(store, fmt, **kw)
    finally:
        store.close()


def leftovers(run_dir: Path) -> list[str]:
    return sorted(p.name for p in run_dir.iterdir() if p.name.endswith(".tmp"))


def export_files(run_dir: Path) -> list[str]:
    return sorted(p.name for p in run_dir.iterdir() if p.stem in EXPORTS)


def test_jsonl_bytes_are_unchanged(tmp_path):
    run = make_run(tmp_path / "r", 2, words=2, messages=PROMPT, rbr=True)
    run_export(run)
    assert (run / "sft.jsonl").read_text(encoding="utf-8") == (
        '{"id": "r0", "messages": [{"role": "developer", "content": "Be brief."}, {"role": "user"'
        ', "content": "Où est la gare ?"}, {"role": "assistant", "content": "final 0: isxr ojiqfolnb"}]'
        ', "quality": []}\n'
        '{"id": "r1", "messages": [{"role": "developer", "content": "Be brief."}, {"role": "user"'
        ', "content": "Où est la gare ?"}, {"role": "assistant"'
        ', "content": "final 1: giweogz czwzmhhdi"}], "quality": []}\n')
    assert (run / "pairs.jsonl").read_text(encoding="utf-8") == (
        '{"id": "r0", "prompt": [{"role": "developer", "content": "Be brief."}, {"role": "user"'
        ', "content": "Où est la gare ?"}], "chosen": [{"role": "assistant"'
        ', "content": "final 0: isxr ojiqfolnb"}], "rejected": [{"role": "assistant"'
        ', "content": "draft 0: tkgnkuhm nhtqg"}], "metadata": {"principles": ["be-specific"]'
        ', "rounds": 1, "violations": [true]}, "quality": [], "source": "revision", "review": null'
        ', "reward_chosen": 0.75, "reward_rejected": 0.25}\n'
        '{"id": "r1", "prompt": [{"role": "developer", "content": "Be brief."}, {"role": "user"'
        ', "content": "Où est la gare ?"}], "chosen": [{"role": "assistant"'
        ', "content": "final 1: giweogz czwzmhhdi"}], "rejected": [{"role": "assistant"'
        ', "content": "draft 1: cv pv"}], "metadata": {"principles": ["be-specific"], "rounds": 1'
        ', "violations": [null]}, "quality": [], "source": "revision", "review": null, "reward_chosen": 0.75'
        ', "reward_rejected": 0.25}\n')
    assert (run / "critiques.jsonl").read_text(encoding="utf-8") == (
        '{"id": "r0", "round": 1, "principle": "be-specific", "layer": null, "kind": null'
        ', "critique": "too vague 0", "verdict": {"critique": "too vague 0", "violates": true, "severity": 2}'
        ', "parsed": true, "rule_override": null, "before": "draft 0: tkgnkuhm nhtqg"'
        ', "after": "final 0: isxr ojiqfolnb"}\n'
        '{"id": "r1", "round": 1, "principle": "be-specific", "layer": null, "kind": null'
        ', "critique": "too vague 1", "verdict": null, "parsed": false, "rule_override": null'
        ', "before": "draft 1: cv pv", "after": "final 1: giweogz czwzmhhdi"}\n')


@pytest.mark.parametrize("rbr", [False, True])
def test_parquet_columns_are_nested_trl_lists(tmp_path, rbr):
    run = make_run(tmp_path / "r", 3, rbr=rbr)
    run_export(run, "parquet")
    sft = pd.read_parquet(run / "sft.parquet")
    messages = list(sft["messages"][0])
    assert all(isinstance(m, dict) and list(m) == ["role", "content"] for m in messages)
    assert messages[0] == {"role": "user", "content": "question 0?"}
    assert messages[1]["role"] == "assistant" and messages[1]["content"].startswith("final 0: ")
    pairs = pq.read_table(run / "pairs.parquet")
    assert pairs.schema.field("prompt").type == MESSAGE_LIST == pairs.schema.field("chosen").type
    assert pairs.schema.field("metadata").type == pa.struct([("principles", pa.list_(pa.string())),
                                                             ("rounds", pa.int64()),
                                                             ("violations", pa.list_(pa.bool_()))])
    rows = pairs.to_pylist()
    assert [r["metadata"]["violations"] for r in rows] == [[True], [None], [True]]
    assert rows[1]["rejected"] == [{"role": "assistant", "content": rows[1]["rejected"][0]["content"]}]
    assert rows[1]["rejected"][0]["content"].startswith("draft 1: ")
    if rbr:
        assert pairs.schema.field("reward_chosen").type == pa.float64() == pairs.schema.field("reward_rejected").type
        assert [(r["reward_chosen"], r["reward_rejected"]) for r in rows] == [(0.75, 0.25)] * 3
    else:
        assert "reward_chosen" not in pairs.schema.names
    crits = pq.read_table(run / "critiques.parquet")
    assert crits.schema.field("verdict").type == pa.struct([("critique", pa.string()), ("violates", pa.bool_()),
                                                            ("severity", pa.int64())])
    assert [r["verdict"] for r in crits.to_pylist()] == [
        {"critique": "too vague 0", "violates": True, "severity": 2}, None,
        {"critique": "too vague 2", "violates": True, "severity": 2}]


def test_parquet_loads_with_datasets_as_message_lists(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True, raising=False)
    run = make_run(tmp_path / "r", 4)
    run_export(run, "parquet")
    ds = {name: datasets.load_dataset("parquet", data_files=str(run / f"{name}.parquet"), split="train",
                                      cache_dir=str(tmp_path / "hf")) for name in EXPORTS}  # one schema each
    assert ds["sft"][2]["messages"][0] == {"role": "user", "content": "question 2?"}
    assert ds["pairs"][0]["chosen"][0]["role"] == "assistant" and ds["pairs"].num_rows == 4
    assert ds["critiques"][1]["verdict"] is None


def test_parquet_rows_are_streamed_in_row_groups(tmp_path, monkeypatch):
    monkeypatch.setattr("cai.read.parquet.ROWS_PER_GROUP", 4)
    run = make_run(tmp_path / "r", 10)
    run_export(run, "parquet")
    meta = pq.ParquetFile(run / "sft.parquet").metadata
    assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == [4, 4, 2]
    assert pd.read_parquet(run / "pairs.parquet")["id"].tolist() == [f"r{i}" for i in range(10)]


def test_an_empty_run_writes_parquet_with_the_schema(tmp_path):
    run = make_run(tmp_path / "r", 0)
    run_export(run, "parquet")
    table = pq.read_table(run / "sft.parquet")
    assert table.num_rows == 0 and table.schema.field("messages").type == MESSAGE_LIST


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
@pytest.mark.parametrize("mask", [0o022, 0o027], ids=["022", "027"])
def test_exports_follow_the_umask(tmp_path, fmt, mask):
    run = make_run(tmp_path / "r", 2)
    old = os.umask(mask)
    try:
        run_export(run, fmt)
    finally:
        os.umask(old)
    for name in [f"{e}.{fmt}" for e in EXPORTS] + ["manifest.json"]:
        assert (run / name).stat().st_mode & 0o777 == 0o666 & ~mask, name


def test_reexport_in_another_format_removes_the_stale_files(tmp_path):
    run = make_run(tmp_path / "r", 2)
    run_export(run, "jsonl")
    (run / "notes.jsonl").write_text("mine\n")
    run_export(run, "parquet")
    assert export_files(run) == ["critiques.parquet", "pairs.parquet", "sft.parquet"]
    run_export(run, "jsonl")
    assert export_files(run) == ["critiques.jsonl", "pairs.jsonl", "sft.jsonl"]
    assert (run / "notes.jsonl").read_text() == "mine\n"


def test_a_failed_export_keeps_the_previous_files(tmp_path):
    run = make_run(tmp_path / "r", 2)
    run_export(run, "jsonl")
    before = {name: (run / name).read_bytes() for name in export_files(run)}
    store = Store(run)  # a verdict pyarrow cannot store as the schema's int64 severity
    try:
        store.add_step("r1", 2, "critique", 1, {"principle": "p", "response": "d", "parsed": True, "critique": "c",
                                                "verdict": {"critique": "c", "violates": True, "severity": "high"}})
    finally:
        store.close()
    with pytest.raises((pa.ArrowInvalid, pa.ArrowTypeError)):
        run_export(run, "parquet")
    assert {name: (run / name).read_bytes() for name in export_files(run)} == before
    assert leftovers(run) == []


class _CloseFails:
    """A file whose close() closes it and then raises EIO, as a failing disk would."""

    def __init__(self, fh: Any) -> None:
        self._fh = fh

    def __getattr__(self, name: str) -> Any:
        return getattr(self._fh, name)

    def close(self) -> None:
        self._fh.close()
        raise OSError(errno.EIO, os.strerror(errno.EIO))


def test_a_close_that_raises_leaves_no_temp_files(tmp_path, monkeypatch):
    run = make_run(tmp_path / "r", 3)
    real_fdopen, opened = os.fdopen, []

    def fdopen(*args: Any, **kw: Any) -> Any:
        fh = real_fdopen(*args, **kw)
        opened.append(fh)
        return _CloseFails(fh) if len(opened) == 1 else fh

    monkeypatch.setattr(os, "fdopen", fdopen)
    with pytest.raises(OutputError) as info:
        run_export(run)
    assert str(info.value) == f"{run / 'sft.jsonl'}: cannot write export: Input/output error"
    assert info.value.path == str(run / "sft.jsonl") and info.value.exit_code == 2
    assert isinstance(info.value.__cause__, OSError) and info.value.__cause__.errno == errno.EIO
    assert len(opened) == 3 and all(fh.closed for fh in opened)
    assert leftovers(run) == [] and export_files(run) == []


def test_temp_files_of_a_killed_export_are_swept(tmp_path):
    run = make_run(tmp_path / "r", 2)
    stale = [".sft.jsonl.k2x9q1ab.tmp", ".pairs.parquet.zz01.tmp", ".critiques.jsonl.a.tmp",
             ".manifest.json.4f7v_e2s.tmp"]
    for name in stale:
        (run / name).write_text("half")
    (run / ".notes.txt.1.tmp").write_text("not ours")
    run_export(run)
    assert leftovers(run) == [".notes.txt.1.tmp"]


@contextmanager
def tmpfs(path: Path, size: int) -> Iterator[Path]:
    """A tmpfs of `size` bytes mounted at `path` (skips the test where mounting is not allowed)."""
    path.mkdir()
    try:
        res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                             capture_output=True, text=True)
    except FileNotFoundError:
        pytest.skip("no mount command: the disk-full test needs a small tmpfs")
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs (needs root): {res.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_disk_full_is_one_line_and_leaves_nothing_behind(tmp_path, fmt):
    src = make_run(tmp_path / "src", 60, words=400, seed=7)
    run_export(src, fmt)
    store_size = (src / "run.sqlite").stat().st_size
    exports_size = sum((src / f"{name}.{fmt}").stat().st_size for name in EXPORTS)
    size = (store_size + 128 * 1024 + exports_size // 2) // 4096 * 4096  # the store fits, the exports do not
    with tmpfs(tmp_path / "small", size) as run:
        shutil.copy(src / "run.sqlite", run / "run.sqlite")
        with pytest.raises(OutputError) as info:
            run_export(run, fmt)
        err = info.value
        assert err.path in {str(run / f"{name}.{fmt}") for name in EXPORTS}
        assert str(err) == f"{err.path}: cannot write export: No space left on device"
        assert isinstance(err.__cause__, OSError) and err.__cause__.errno == errno.ENOSPC
        assert leftovers(run) == [] and export_files(run) == []
        res = cai("export", run, "--format", fmt)
        assert res.exit_code == 2
        assert res.stderr.splitlines() == [f"error: {run}/{Path(err.path).name}: "
                                           "cannot write export: No space left on device"]
        assert leftovers(run) == [] and export_files(run) == [] and not (run / "manifest.json").exists()


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_developer_turns_become_system_turns_when_asked(tmp_path, fmt):
    def prompts(run: Path, **kw: Any) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
        """The sft messages less the answer, and the pair prompt, of the run's one record."""
        store = Store.open_run(run)
        try:
            export(store, fmt, **kw)
        finally:
            store.close()
        if fmt == "parquet":
            sft, pairs = (pq.read_table(run / f"{n}.parquet").to_pylist()[0] for n in ("sft", "pairs"))
        else:
            sft, pairs = (json.loads((run / f"{n}.jsonl").read_text()) for n in ("sft", "pairs"))
        assert sft["messages"][-1]["role"] == "assistant"
        return sft["messages"][:-1], pairs["prompt"]

    as_system = [{"role": "system", "content": "Be brief."}, PROMPT[1]]
    plain = make_run(tmp_path / "plain", 1, messages=PROMPT)
    assert prompts(plain) == (PROMPT, PROMPT)
    assert prompts(plain, developer_as_system=True) == (as_system, as_system)
    asked = make_run(tmp_path / "asked", 1, messages=PROMPT, settings={"system_role_for_developer": True})
    assert prompts(asked) == (as_system, as_system)
    assert prompts(asked, developer_as_system=False) == (PROMPT, PROMPT)
