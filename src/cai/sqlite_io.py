"""SQLite connections for the run store: read-only snapshots that never write, WAL writers, rollback, and
what counts as a failure of the store itself (as opposed to one write's data)."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path


def connect(path: Path, readonly: bool = False) -> sqlite3.Connection:
    """A connection in autocommit mode with a 10 s busy timeout: read-only (`mode=ro`, or `immutable=1` on a
    read-only filesystem), or a writer in WAL mode."""
    if readonly:  # a committed snapshot per query; never writes, never creates the file
        uri = f"{path.resolve().as_uri()}?mode=ro"
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
