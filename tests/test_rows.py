"""cai.read.rows and cai.store.steps: a run's store is read once per export and per report, `Run.diff` reads the one
record it shows, and steps keep their stored text while their kinds are typed."""

from __future__ import annotations

import json
import sqlite3
from collections import Counter
from pathlib import Path

import pytest

import cai
from cai.errors import InputError
from cai.read.export import export_run
from cai.read.hf import write_hf
from cai.report.data import gather
from cai.store import Store
from cai.store.steps import Kind, Step
from reliability import KEY

PROMPTS = [f"How do I do task number {i}?" for i in range(4)]


@pytest.fixture(autouse=True)
def _key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)


@pytest.fixture
def reads(monkeypatch) -> Counter[str]:
    """How often each run was read whole (`Store.iter_records`) and one record was read (`Store.record`)."""
    counts: Counter[str] = Counter()
    iter_records, record = Store.iter_records, Store.record

    def counted_iter(self):
        counts["passes"] += 1
        yield from iter_records(self)

    def counted_record(self, rid):
        counts["records"] += 1
        return record(self, rid)

    monkeypatch.setattr(Store, "iter_records", counted_iter)
    monkeypatch.setattr(Store, "record", counted_record)
    return counts


def make_run(tmp_path: Path, srv) -> cai.Run:
    return cai.run(PROMPTS, out=tmp_path / "r", model="openai:stub", base_url=srv.url, rounds=2, max_tokens=16,
                   max_retries=0)


def test_an_export_reads_the_store_once(tmp_path, stub_server, reads):
    run = make_run(tmp_path, stub_server)
    reads.clear()
    store = Store.open_run(run.path)
    try:
        export_run(store, "jsonl")
        assert reads["passes"] == 1
        export_run(store, "parquet")
        assert reads["passes"] == 2
    finally:
        store.close()
    write_hf(run.path, tmp_path / "hf")
    assert reads["passes"] == 3


def test_the_report_reads_the_store_once(tmp_path, stub_server, reads):
    run = make_run(tmp_path, stub_server)
    reads.clear()
    data = gather(run)
    assert reads["passes"] == 1
    assert len(data.records) == len(PROMPTS)
    # the statistics gathered in that pass are the tables Run makes on its own
    assert data.principle_stats.equals(run.principle_stats())
    assert data.rounds.equals(run.rounds())


def test_diff_reads_one_record(tmp_path, stub_server, reads):
    run = make_run(tmp_path, stub_server)
    reads.clear()
    d = run.diff("p2")
    assert (reads["passes"], reads["records"]) == (0, 1)
    assert d.id == "p2" and len(d.steps) == 2
    with pytest.raises(InputError, match="no record 'nope'"):
        run.diff("nope")


def test_steps_are_typed_and_stored_as_before(tmp_path, stub_server):
    run = make_run(tmp_path, stub_server)
    with sqlite3.connect(run.path / "run.sqlite") as db:
        stored = db.execute("SELECT seq, kind, round, data FROM steps WHERE record_id='p1' ORDER BY seq").fetchall()
    store = Store.open_run(run.path, readonly=True)
    try:
        steps = store.steps("p1")
        rec = store.record("p1")
    finally:
        store.close()
    assert [s.kind for s in steps] == [Kind.DRAFT, Kind.CRITIQUE, Kind.REVISE, Kind.CRITIQUE, Kind.REVISE]
    assert [(k, r) for _, k, r, _ in stored] == [(s.kind.value, s.round) for s in steps]
    assert [json.loads(d) for *_, d in stored] == [s.data for s in steps]
    assert rec is not None and rec.steps == steps and rec.done
    assert Step.from_row(*stored[0]) == steps[0]
    with pytest.raises(ValueError):
        Step.from_row(0, "rewrite", 0, "{}")


def test_each_run_table_is_one_pass(tmp_path, stub_server, reads):
    run = make_run(tmp_path, stub_server)
    reads.clear()
    for table in (run.records, run.pairs, run.sft, run.critiques, run.labels, run.grades):
        table()
    assert reads["passes"] == 6
