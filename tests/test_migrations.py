"""Schema migrations: a store an older cai made (without the later tables and columns, and without `_migrations`)
is brought up to date when opened for writing, in the list's order, each migration once, all or none; a read-only
open writes nothing and still reads it; a new store records every migration with its schema."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import pytest

from cai.store import DB_NAME, Store, migrations
from cai.store.sqlite_io import create, leftovers
from golden import CASES, GOLDEN, JSONL, OLD_STORE, cli, copy_inputs, old_store_server, run_args

NAMES = [m.__name__ for m in migrations.MIGRATIONS]
# The schema of the first stores: no invocations or input_lines table, no errors.resolved or calls.shared column.
OLD_SCHEMA = """
CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE records(idx INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, messages TEXT NOT NULL,
  extra TEXT NOT NULL, status TEXT NOT NULL DEFAULT 'pending', updated REAL);
CREATE TABLE steps(record_id TEXT NOT NULL, seq INTEGER NOT NULL, kind TEXT NOT NULL,
  round INTEGER NOT NULL, data TEXT NOT NULL, created REAL NOT NULL, PRIMARY KEY(record_id, seq));
CREATE TABLE calls(key TEXT PRIMARY KEY, role TEXT NOT NULL, model TEXT NOT NULL,
  response TEXT NOT NULL, tokens_in INTEGER NOT NULL, tokens_out INTEGER NOT NULL, created REAL NOT NULL);
CREATE TABLE errors(n INTEGER PRIMARY KEY AUTOINCREMENT, record_id TEXT NOT NULL, stage TEXT NOT NULL,
  error_class TEXT NOT NULL, message TEXT NOT NULL, created REAL NOT NULL);
"""
COPY = {"meta": "key, value", "records": "idx, id, messages, extra, status, updated",
        "steps": "record_id, seq, kind, round, data, created",
        "calls": "key, role, model, response, tokens_in, tokens_out, created",
        "errors": "n, record_id, stage, error_class, message, created"}


def old_run(work: Path) -> Path:
    """A run folder in `work` whose store has the first schema and the rows of the plain case's finished run (one
    unresolved error row added), with the plain case's inputs beside it."""
    copy_inputs(work)
    run = work / CASES["plain"].name
    run.mkdir()
    with contextlib.closing(sqlite3.connect(run / DB_NAME, isolation_level=None)) as db:
        db.executescript(OLD_SCHEMA)
        db.execute("ATTACH DATABASE ? AS recorded", (f"{OLD_STORE.as_uri()}?immutable=1",))
        db.execute("BEGIN")
        for table, cols in COPY.items():
            db.execute(f"INSERT INTO {table}({cols}) SELECT {cols} FROM recorded.{table}")
        db.execute("INSERT INTO errors(record_id, stage, error_class, message, created) "
                   "VALUES('gone', 'generate', 'Timeout', 'an old failure', 1.0)")
        db.execute("COMMIT")
        db.execute("DETACH DATABASE recorded")
    return run


def exports_of(run: Path) -> dict[str, bytes]:
    return {name: (run / f"{name}.jsonl").read_bytes() for name in JSONL if (run / f"{name}.jsonl").exists()}


def recorded(store: Path) -> list[tuple[str, float]]:
    """The store's `_migrations` rows, in the order they were written (read, never written)."""
    with contextlib.closing(sqlite3.connect(f"{store.as_uri()}?mode=ro", uri=True)) as db:
        return db.execute("SELECT name, applied_at FROM _migrations ORDER BY rowid").fetchall()


def columns(store: Path, table: str) -> set[str]:
    with contextlib.closing(sqlite3.connect(f"{store.as_uri()}?mode=ro", uri=True)) as db:
        return migrations.columns(db, table)


def test_an_old_store_is_migrated_when_opened_for_writing_and_resumes(tmp_path: Path) -> None:
    """`cai run` on the old store adds what it lacks, records every migration in order, calls no model (its work
    is all there) and writes the recorded exports."""
    run = old_run(tmp_path)
    case = CASES["plain"]
    with old_store_server(case) as srv:
        cli("run", tmp_path / case.input, *run_args(case, tmp_path, srv), "--quiet")
        assert srv.count() == 0, "resuming the migrated store called a model"
    assert exports_of(run) == exports_of(GOLDEN / "plain")
    assert [name for name, _ in recorded(run / DB_NAME)] == NAMES
    assert {"resolved"} <= columns(run / DB_NAME, "errors") and {"shared"} <= columns(run / DB_NAME, "calls")
    with contextlib.closing(Store.open_run(run, readonly=True)) as store:
        assert store.invocations(), "the run's invocation was not logged in the table a migration added"
        assert store.errors()[-1]["message"] == "an old failure" and not store.errors()[-1]["resolved"]


def test_opening_twice_applies_nothing_twice(tmp_path: Path) -> None:
    run = old_run(tmp_path)
    Store.open_run(run).close()
    first = recorded(run / DB_NAME)
    assert [name for name, _ in first] == NAMES
    Store.open_run(run).close()
    assert recorded(run / DB_NAME) == first
    with contextlib.closing(sqlite3.connect(run / DB_NAME, isolation_level=None)) as db:
        assert migrations.migrate(db) == []
        assert db.execute("SELECT COUNT(*) FROM errors").fetchone()[0] > 0


def test_a_readonly_open_of_an_old_store_writes_nothing_and_still_reads(tmp_path: Path) -> None:
    run = old_run(tmp_path)
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    with contextlib.closing(Store.open_run(run, readonly=True)) as store:
        assert store.counts() and store.statuses()
        assert store.error_count() == 1 and store.errors()[-1]["resolved"] is False
        assert store.token_totals(shared=False) and not store.token_totals(shared=True)
        assert all(row[7] == 0 for row in store.read_calls())  # an old store's calls read as unshared
    with contextlib.closing(sqlite3.connect(f"{(run / DB_NAME).as_uri()}?mode=ro", uri=True)) as db:
        assert migrations.applied(db) == []
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before
    assert "resolved" not in columns(run / DB_NAME, "errors")


def test_a_new_store_records_every_migration_in_the_list_order(tmp_path: Path) -> None:
    Store(tmp_path).close()
    rows = recorded(tmp_path / DB_NAME)
    assert [name for name, _ in rows] == NAMES
    assert len(set(NAMES)) == len(NAMES) and NAMES == sorted(NAMES)  # mNNN_ prefixes follow the list


def test_a_new_store_and_its_migrations_are_created_in_one_transaction(tmp_path: Path) -> None:
    """A creation that fails while recording the migrations leaves no store (nothing half made)."""
    def fails_after_recording(conn: sqlite3.Connection) -> None:
        migrations.record_all(conn)
        raise sqlite3.OperationalError("disk I/O error")

    path = tmp_path / DB_NAME
    with pytest.raises(sqlite3.OperationalError):
        create(path, migrations.SCHEMA, fails_after_recording)
    assert not path.exists()
    with contextlib.closing(sqlite3.connect(leftovers(path)[0])) as db:  # what was left holds nothing
        assert db.execute("SELECT name FROM sqlite_master").fetchall() == []


def test_migrations_run_in_the_list_order_and_all_or_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = old_run(tmp_path)
    ran: list[str] = []

    def step(name: str, fail: bool = False) -> migrations.Migration:
        def migration(conn: sqlite3.Connection) -> None:
            ran.append(name)
            conn.execute(f"ALTER TABLE meta ADD COLUMN {name} INTEGER")
            if fail:
                raise sqlite3.OperationalError("disk I/O error")
        migration.__name__ = name
        return migration

    monkeypatch.setattr(migrations, "MIGRATIONS", (step("m_b"), step("m_a"), step("m_c", fail=True)))
    with pytest.raises(Exception, match="disk I/O error"):
        Store.open_run(run)
    assert ran == ["m_b", "m_a", "m_c"]
    assert columns(run / DB_NAME, "meta") == {"key", "value"} and columns(run / DB_NAME, "_migrations") == set()

    monkeypatch.setattr(migrations, "MIGRATIONS", (step("m_b"), step("m_a")))
    Store.open_run(run).close()
    assert [name for name, _ in recorded(run / DB_NAME)] == ["m_b", "m_a"]
