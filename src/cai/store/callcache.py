"""A call cache shared by many runs (`cai run --cache PATH`, `cai.run(..., cache=PATH)`).

Keyed exactly like a run's own calls (`cai.calls.cache_key`: the model's identity and the request's
output-affecting fields), so a second run that asks an identical question (the same draft under another
constitution, say) takes the answer from here instead of paying for it again. A run copies every hit
into its own store (marked `shared`), so the run stays complete without the cache and resumes the same.

One SQLite file (WAL) that many processes may read and write at once. The cache never fails a run: once a
write fails (disk full, read-only, locked for too long) it stops writing and says why in `failed`.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
import time
from pathlib import Path

from cai.calls import Completion
from cai.errors import InputError, OutputError
from cai.store.sqlite_io import connect

TABLE = "cai_shared_calls"
SCHEMA = f"""CREATE TABLE IF NOT EXISTS {TABLE}(key TEXT PRIMARY KEY, model TEXT NOT NULL, response TEXT NOT NULL,
  tokens_in INTEGER NOT NULL, tokens_out INTEGER NOT NULL, created REAL NOT NULL)"""


class CallCache:
    """The cache file at `path` (created with its folder if missing). InputError naming it if it is some
    other SQLite file or not a database; OutputError if it cannot be created."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.hits = 0  # answers taken from the cache by this process
        self.stored = 0  # answers this process added
        self.failed: str | None = None  # why writing stopped, if it did
        self._lock = threading.Lock()
        if self.path.is_dir():
            raise InputError("--cache is a folder; give a file path, e.g. cache.sqlite", path=str(self.path))
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        except (OSError, sqlite3.Error) as e:
            raise OutputError(f"cannot create the call cache ({e})", path=str(self.path)) from e
        try:
            self._conn.execute("PRAGMA busy_timeout=10000")
            tables = {r[0] for r in self._conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if tables and TABLE not in tables:
                raise InputError("not a cai call cache (it is another SQLite database)", path=str(self.path))
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.execute(SCHEMA)
        except sqlite3.DatabaseError as e:
            self._conn.close()
            if type(e) is sqlite3.DatabaseError:  # "file is not a database"
                raise InputError(f"not a cai call cache ({e})", path=str(self.path)) from e
            raise OutputError(f"cannot open the call cache ({e})", path=str(self.path)) from e
        except InputError:
            self._conn.close()
            raise

    def get(self, key: str) -> Completion | None:
        """The cached answer for `key`, or None (also when the cache cannot be read just now)."""
        try:
            with self._lock:
                row = self._conn.execute(f"SELECT response FROM {TABLE} WHERE key=?", (key,)).fetchone()
        except sqlite3.Error:
            return None
        if row is None:
            return None
        self.hits += 1
        return Completion.model_validate_json(row[0])

    def put(self, key: str, model: str, comp: Completion) -> None:
        """Add an answer (the first one stored for a key is kept); a failure stops later writes."""
        if self.failed is not None:
            return
        try:
            with self._lock:
                self._conn.execute(f"INSERT OR IGNORE INTO {TABLE} VALUES(?,?,?,?,?,?)",
                                   (key, model, comp.model_dump_json(), comp.tokens_in, comp.tokens_out, time.time()))
            self.stored += 1
        except sqlite3.Error as e:
            self.failed = f"{self.path}: {e}"

    async def aput(self, key: str, model: str, comp: Completion) -> None:
        """`put` in a worker thread: another process's write lock must not stall the event loop."""
        await asyncio.to_thread(self.put, key, model, comp)

    def __len__(self) -> int:
        with self._lock:
            return int(self._conn.execute(f"SELECT COUNT(*) FROM {TABLE}").fetchone()[0])

    def report(self) -> dict[str, object]:
        """What the manifest says about the cache for this invocation."""
        return {"path": str(self.path), "hits": self.hits, "stored": self.stored, "failed": self.failed}

    def close(self) -> None:
        with self._lock, contextlib.suppress(sqlite3.Error):
            self._conn.close()


class CacheReader:
    """The cache file at `path` read without writing (nothing is created: without a file it holds nothing), for
    `cai estimate`. InputError naming it if it is not a call cache."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self._conn = connect(self.path, readonly=True, untouched=True) if self.path.is_file() else None
        except sqlite3.DatabaseError as e:
            raise InputError(f"not a readable cai call cache ({e})", path=str(self.path)) from e

    def _query(self, sql: str, args: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        if self._conn is None:
            return []
        try:
            return self._conn.execute(sql, args).fetchall()
        except sqlite3.DatabaseError as e:
            raise InputError(f"not a readable cai call cache ({e})", path=str(self.path)) from e

    def has(self, key: str) -> bool:
        """Whether the cache answers the call `key`."""
        return bool(self._query(f"SELECT 1 FROM {TABLE} WHERE key=?", (key,)))

    def model_tokens(self) -> dict[str, dict[str, int]]:
        """Per model spec: the calls the cache holds and their tokens in and out."""
        rows = self._query(f"SELECT model, COUNT(*), SUM(tokens_in), SUM(tokens_out) FROM {TABLE} GROUP BY model")
        return {str(m): {"calls": int(n), "tokens_in": int(ti or 0), "tokens_out": int(to or 0)}  # type: ignore[arg-type]
                for m, n, ti, to in rows}

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
