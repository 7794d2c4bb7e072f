"""The input is read once to validate and hash it and once more to work on it, and in-memory prompts leave no
file outside the run folder."""

from __future__ import annotations

import pathlib
import tempfile

import pytest

import cai
from reliability import KEY

PROMPTS = ["What is a lighthouse?", "Name three rivers.", "Why is the sky blue?"]


@pytest.fixture(autouse=True)
def _key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)


def options(srv) -> dict:
    return {"model": "openai:stub", "base_url": srv.url, "rounds": 1, "max_tokens": 16, "max_retries": 2}


def opens_of(path: pathlib.Path, monkeypatch) -> list[str]:
    """Every mode `path` is opened with from now on (through pathlib or the builtin open)."""
    seen: list[str] = []
    path_open, builtin_open = pathlib.Path.open, open

    def counted_path_open(self, mode="r", *args, **kwargs):
        if self.resolve() == path.resolve():
            seen.append(mode)
        return path_open(self, mode, *args, **kwargs)

    def counted_open(file, mode="r", *args, **kwargs):
        if isinstance(file, (str, pathlib.Path)) and pathlib.Path(file).resolve() == path.resolve():
            seen.append(mode)
        return builtin_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "open", counted_path_open)
    monkeypatch.setattr("builtins.open", counted_open)
    return seen


@pytest.mark.parametrize("fmt", ["jsonl", "txt"])
def test_a_run_reads_its_input_twice_also_when_it_grew(tmp_path, stub_server, monkeypatch, fmt):
    """One pass validates and hashes the file (bytes and lines), one more feeds the pipeline; a resume with
    rows appended reads it twice too (no separate check that it grew), never more."""
    inp = tmp_path / f"in.{fmt}"
    inp.write_text("".join(f"{p}\n" for p in PROMPTS) if fmt == "txt" else
                   "".join(f'{{"prompt": "{p}"}}\n' for p in PROMPTS))
    seen = opens_of(inp, monkeypatch)
    first = cai.run(inp, out=tmp_path / "r", **options(stub_server))
    assert first.invocation["done"] == 3 and seen == ["rb", "rb"]
    with inp.open("a") as fh:
        fh.write("How do bees talk?\n" if fmt == "txt" else '{"prompt": "How do bees talk?"}\n')
    seen.clear()
    grown = cai.run(inp, out=tmp_path / "r", **options(stub_server))
    assert grown.invocation["done"] == 1 and seen == ["rb", "rb"]


def test_in_memory_prompts_leave_nothing_outside_the_run_folder(tmp_path, stub_server, monkeypatch):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    first = cai.run(PROMPTS, out=tmp_path / "r", **options(stub_server))
    assert first.invocation["done"] == 3 and list(tmp.iterdir()) == []
    calls = stub_server.count()
    again = cai.run(PROMPTS, out=tmp_path / "r", **options(stub_server))  # the same prompts resume
    assert again.invocation["calls"] == 0 and stub_server.count() == calls and list(tmp.iterdir()) == []
