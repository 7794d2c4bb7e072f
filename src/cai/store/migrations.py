"""Changes to the run store's schema since its first version: an ordered list of named migrations, recorded in
the store's `_migrations` table (name, applied_at) as they are applied.

Opening a store for writing applies the ones it has not recorded, in order, in one transaction under SQLite's
write lock (`migrate`). A new store's schema already holds every change, so its creation records them all
(`record_all`). Stores made before this table existed record none: each migration first checks whether its
change is there already, so for them it is only recorded. A read-only open applies nothing; the store's reads
tolerate what an old store lacks. The statements here are history: they never change once released, even when
the store's schema does.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable

from cai.store.sqlite_io import rollback

# The schema of a new store; every change since the first version is a migration below.
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS records(idx INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, messages TEXT NOT NULL,
  extra TEXT NOT NULL, status TEXT NOT NULL DEFAULT 'pending', updated REAL);
CREATE TABLE IF NOT EXISTS steps(record_id TEXT NOT NULL, seq INTEGER NOT NULL, kind TEXT NOT NULL,
  round INTEGER NOT NULL, data TEXT NOT NULL, created REAL NOT NULL, PRIMARY KEY(record_id, seq));
CREATE TABLE IF NOT EXISTS calls(key TEXT PRIMARY KEY, role TEXT NOT NULL, model TEXT NOT NULL,
  response TEXT NOT NULL, tokens_in INTEGER NOT NULL, tokens_out INTEGER NOT NULL, created REAL NOT NULL,
  shared INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS errors(n INTEGER PRIMARY KEY AUTOINCREMENT, record_id TEXT NOT NULL, stage TEXT NOT NULL,
  error_class TEXT NOT NULL, message TEXT NOT NULL, created REAL NOT NULL, resolved INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS invocations(n INTEGER PRIMARY KEY AUTOINCREMENT, pid INTEGER NOT NULL,
  started REAL NOT NULL, ended REAL NOT NULL, command TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS input_lines(n INTEGER PRIMARY KEY, hash BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS budget_holds(key TEXT PRIMARY KEY, usd REAL NOT NULL, created REAL NOT NULL);
"""
TABLES = {"meta", "records", "steps", "calls", "errors"}  # every store has these (the others came with migrations)

Migration = Callable[[sqlite3.Connection], None]
TABLE_SQL = "CREATE TABLE IF NOT EXISTS _migrations(name TEXT PRIMARY KEY, applied_at REAL NOT NULL)"


def columns(conn: sqlite3.Connection, table: str) -> set[str]:
    """The column names of `table` (empty if there is no such table)."""
    return {r[1] for r in conn.execute(f'PRAGMA table_info("{table}")')}


def _add_column(conn: sqlite3.Connection, table: str, column: str, declaration: str) -> None:
    if column not in columns(conn, table):
        conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")


def m001_invocations(conn: sqlite3.Connection) -> None:
    """The log of the commands that opened the run for writing."""
    conn.execute("CREATE TABLE IF NOT EXISTS invocations(n INTEGER PRIMARY KEY AUTOINCREMENT, pid INTEGER NOT NULL, "
                 "started REAL NOT NULL, ended REAL NOT NULL, command TEXT NOT NULL)")


def m002_errors_resolved(conn: sqlite3.Connection) -> None:
    """An error row is marked resolved once its record later succeeds."""
    _add_column(conn, "errors", "resolved", "INTEGER NOT NULL DEFAULT 0")


def m003_calls_shared(conn: sqlite3.Connection) -> None:
    """Calls copied from the shared call cache are marked as such."""
    _add_column(conn, "calls", "shared", "INTEGER NOT NULL DEFAULT 0")


def m004_input_lines(conn: sqlite3.Connection) -> None:
    """The hash of each input line, so a grown input is worked on and a changed line refused."""
    conn.execute("CREATE TABLE IF NOT EXISTS input_lines(n INTEGER PRIMARY KEY, hash BLOB NOT NULL)")


def m005_budget_holds(conn: sqlite3.Connection) -> None:
    """Under `--max-cost`, each call's worst-case cost is noted before it is sent and removed once its answer is
    stored, so a call cut off by a kill is still counted against the budget."""
    conn.execute("CREATE TABLE IF NOT EXISTS budget_holds(key TEXT PRIMARY KEY, usd REAL NOT NULL, "
                 "created REAL NOT NULL)")


MIGRATIONS: tuple[Migration, ...] = (m001_invocations, m002_errors_resolved, m003_calls_shared, m004_input_lines,
                                     m005_budget_holds)


def applied(conn: sqlite3.Connection) -> list[str]:
    """The names of the migrations recorded in the store, in the order they were applied."""
    if not columns(conn, "_migrations"):
        return []
    return [r[0] for r in conn.execute("SELECT name FROM _migrations ORDER BY rowid")]


def pending(conn: sqlite3.Connection, migrations: tuple[Migration, ...] | None = None) -> list[Migration]:
    """The `migrations` (None: the run store's) the store has not recorded, in the list's order."""
    done = set(applied(conn))
    return [m for m in (MIGRATIONS if migrations is None else migrations) if m.__name__ not in done]


def record_all(conn: sqlite3.Connection, migrations: tuple[Migration, ...] | None = None) -> None:
    """Record every migration (None: the run store's) as applied, in the caller's transaction (a new store, whose
    schema has them all)."""
    _record(conn, MIGRATIONS if migrations is None else migrations)


def _record(conn: sqlite3.Connection, migrations: tuple[Migration, ...] | list[Migration]) -> None:
    conn.execute(TABLE_SQL)
    now = time.time()
    conn.executemany("INSERT INTO _migrations(name, applied_at) VALUES(?, ?)",
                     [(m.__name__, now) for m in migrations])


def migrate(conn: sqlite3.Connection, migrations: tuple[Migration, ...] | None = None) -> list[str]:
    """Apply and record the `migrations` (None: the run store's; the review decisions file has its own) the store
    lacks, in order, in one transaction (all or none); the names applied. Writes nothing when none is missing.
    `conn` is a writer in autocommit mode."""
    if not pending(conn, migrations):
        return []
    conn.execute("BEGIN IMMEDIATE")  # the write lock; another opener may have migrated since the check
    try:
        todo = pending(conn, migrations)
        for migration in todo:
            migration(conn)
        _record(conn, todo)
        conn.execute("COMMIT")
    except BaseException:
        rollback(conn)
        raise
    return [m.__name__ for m in todo]
