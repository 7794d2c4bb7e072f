"""SQLite connections for the run store: read-only snapshots that never write, WAL writers, rollback, what
counts as a failure of the store itself (as opposed to one write's data), and creating a database whole."""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
from collections.abc import Callable
from pathlib import Path

from cai.errors import DamagedStore


def connect(path: Path, readonly: bool = False, *, untouched: bool = False) -> sqlite3.Connection:
    """A connection in autocommit mode with a 10 s busy timeout: read-only (`mode=ro`, or `immutable=1` on a
    read-only filesystem), or a writer in WAL mode. `untouched` (read-only): leave no file behind either, where
    SQLite would make the -wal and -shm files a reader of a WAL database needs: a file without a -wal (no writer
    has it open) is read as immutable, as it is now (a writer that starts meanwhile is not seen)."""
    if readonly:  # a committed snapshot per query; never writes, never creates the file
        uri = f"{path.resolve().as_uri()}?mode=ro"
        if untouched and not path.with_name(f"{path.name}-wal").exists():
            uri += "&immutable=1"
        conn = sqlite3.connect(uri, uri=True, check_same_thread=False, isolation_level=None)
        try:
            conn.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()
        except sqlite3.OperationalError:
            if os.access(path.parent, os.W_OK):
                raise
            # A read-only filesystem: SQLite cannot create the WAL index, and nobody can write the file
            # either, so reading it as immutable is safe.
            conn.close()
            conn = sqlite3.connect(uri + "&immutable=1", uri=True, check_same_thread=False, isolation_level=None)
    else:
        conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA busy_timeout=10000")
    return conn


def store_wide(error: BaseException) -> bool:
    """True for failures of the store itself (disk, I/O, locking, corruption), not of one write's data."""
    if isinstance(error, (sqlite3.IntegrityError, sqlite3.DataError, sqlite3.ProgrammingError,
                          sqlite3.InterfaceError)):
        return False
    return isinstance(error, (sqlite3.Error, OSError, MemoryError))


def rollback(conn: sqlite3.Connection) -> None:
    """Roll back if a transaction is open (a failed COMMIT has usually rolled back already)."""
    if conn.in_transaction:
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass


def side_files(path: Path) -> list[Path]:
    """SQLite's files beside database `path`: its rollback journal, WAL and WAL index."""
    return [path.with_name(path.name + suffix) for suffix in ("-journal", "-wal", "-shm")]


def leftovers(path: Path) -> list[Path]:
    """What a killed `create(path)` can leave: the database it was building (`<path>.new`) and its side files."""
    tmp = path.with_name(path.name + ".new")
    return [tmp, *side_files(tmp)]


def create(path: Path, schema: str, init: Callable[[sqlite3.Connection], None] | None = None) -> None:
    """Create database `path` with `schema`, whole or not at all: the schema, and what `init` writes, is committed
    to `<path>.new` in one transaction (which SQLite syncs), the file is switched to WAL and renamed over `path`,
    and the folder is synced. A killed creation leaves `path` as it was, and `leftovers` that the next creation
    removes first. The caller holds the run lock and has checked that a `path` already there holds nothing: its
    side files go too (a stale WAL must not be replayed into the new file)."""
    tmp = leftovers(path)[0]
    for old in leftovers(path):
        old.unlink(missing_ok=True)
    conn = sqlite3.connect(tmp, isolation_level=None)
    try:
        conn.executescript(f"BEGIN;\n{schema}")  # autocommit mode: the script leaves its transaction open
        if init is not None:
            init(conn)
        conn.execute("COMMIT")
        conn.execute("PRAGMA journal_mode=WAL")  # kept in the file, so opening `path` writes nothing
    finally:
        conn.close()  # the last connection: SQLite removes the temporary file's WAL and index
    for old in side_files(path):
        old.unlink(missing_ok=True)
    os.replace(tmp, path)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)  # the rename itself is durable
    finally:
        os.close(folder)


def open_store(path: Path, schema: str, required: set[str], readonly: bool,
               init: Callable[[sqlite3.Connection], None] | None = None, *,
               untouched: bool = False) -> sqlite3.Connection:
    """A connection to the store `path` (`connect`). Where nothing is stored yet (no file, an empty one, or one
    left by a creation an older cai was killed in), to a new store made by `create` (with `init`), or when
    `readonly`, to an empty one in memory (nothing is written). DamagedStore if the file lacks a `required` table
    but holds something: a foreign or damaged file is never turned into a store."""
    if path.exists() and not _blank(path, schema, required, untouched):
        return connect(path, readonly, untouched=untouched)
    if readonly:
        conn = sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None)
        conn.executescript(schema)
        if init is not None:
            init(conn)
        return conn
    create(path, schema, init)
    return connect(path)


def _blank(path: Path, schema: str, required: set[str], untouched: bool = False) -> bool:
    """True if the database `path` lacks a `required` table and holds nothing; DamagedStore if it holds something."""
    with contextlib.closing(connect(path, readonly=True, untouched=untouched)) as probe:
        tables = {r[0] for r in probe.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if required <= tables:
            return False
        if _holds_nothing(probe, set(re.findall(r"CREATE TABLE IF NOT EXISTS (\w+)", schema))):
            return True
    raise DamagedStore("not a cai run, or a damaged store (its tables are missing)", path=str(path))


def _holds_nothing(conn: sqlite3.Connection, tables: set[str]) -> bool:
    """True if the database holds no row, and nothing but some of `tables` (with their indexes)."""
    objects = conn.execute("SELECT type, name, tbl_name FROM sqlite_master").fetchall()
    if any(owner not in tables and owner != "sqlite_sequence" for _, _, owner in objects):
        return False
    present = [name for kind, name, _ in objects if kind == "table" and name in tables]
    return not any(conn.execute(f'SELECT 1 FROM "{name}" LIMIT 1').fetchone() for name in present)
