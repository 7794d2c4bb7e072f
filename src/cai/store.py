"""The run store: `runs/<name>/run.sqlite` (WAL). Inputs, steps, model calls and errors.

Writes are queued to one writer thread, which commits whatever is queued in one transaction (group
commit), so the event loop never waits on the disk or on the writer. The queue is FIFO: a step is
committed together with, or after, the model calls it used, so after a crash (even kill -9) the store
holds a prefix of each record's work. Writes nobody waits for are gathered for up to `COALESCE_S`
before their commit (fewer, larger transactions), so a kill -9 may lose about that much of the
latest steps; they are simply redone on resume. `flush()` waits until everything queued is committed.
Reads use their own connection.
"""

from __future__ import annotations

import asyncio
import json
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from cai.config import Completion
from cai.errors import InputError

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS records(idx INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, messages TEXT NOT NULL,
  extra TEXT NOT NULL, status TEXT NOT NULL DEFAULT 'pending', updated REAL);
CREATE TABLE IF NOT EXISTS steps(record_id TEXT NOT NULL, seq INTEGER NOT NULL, kind TEXT NOT NULL,
  round INTEGER NOT NULL, data TEXT NOT NULL, created REAL NOT NULL, PRIMARY KEY(record_id, seq));
CREATE TABLE IF NOT EXISTS calls(key TEXT PRIMARY KEY, role TEXT NOT NULL, model TEXT NOT NULL,
  response TEXT NOT NULL, tokens_in INTEGER NOT NULL, tokens_out INTEGER NOT NULL, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS errors(n INTEGER PRIMARY KEY AUTOINCREMENT, record_id TEXT NOT NULL, stage TEXT NOT NULL,
  error_class TEXT NOT NULL, message TEXT NOT NULL, created REAL NOT NULL);
"""

DB_NAME = "run.sqlite"
Op = Callable[[sqlite3.Connection], None]


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA busy_timeout=10000")
    return conn


class Store:
    """One run's state. Use `open()`; call `close()` (or use `async with`)."""

    COALESCE_S = 0.02
    MAX_BACKLOG = 1000

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / DB_NAME
        self._read = _connect(self.path)
        self._read.executescript(SCHEMA)
        self._queue: queue.SimpleQueue[tuple[Op, asyncio.Future[None] | None, Any] | None] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._lost: BaseException | None = None

    @classmethod
    def exists(cls, run_dir: Path) -> bool:
        return (Path(run_dir) / DB_NAME).is_file()

    @classmethod
    def open_run(cls, run_dir: Path) -> Store:
        """The store of an existing run; InputError naming the folder if it holds none."""
        if not cls.exists(run_dir):
            raise InputError("not a cai run (no run.sqlite)", path=str(run_dir))
        return cls(run_dir)

    # -- writing -------------------------------------------------------------------------
    def _writer_loop(self) -> None:
        conn = _connect(self.path)
        try:
            while True:
                item = self._queue.get()
                if item is not None and item[1] is None:  # nobody waits on it: let more writes queue up
                    time.sleep(self.COALESCE_S)
                batch = [item]
                while True:
                    try:
                        batch.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
                ops = [b for b in batch if b is not None]
                error: BaseException | None = None
                try:
                    conn.execute("BEGIN IMMEDIATE")
                    for op, _, _ in ops:
                        op(conn)
                    conn.execute("COMMIT")
                except BaseException as e:  # noqa: BLE001 - handed to every waiter
                    conn.execute("ROLLBACK")
                    error = e
                if error is not None and all(fut is None for _, fut, _ in ops):
                    self._lost = error  # nobody waited: report it at the next awaited write
                elif error is None and self._lost is not None:
                    error, self._lost = self._lost, None
                for _, fut, loop in ops:
                    if fut is not None:
                        loop.call_soon_threadsafe(_resolve, fut, error)
                if None in batch:
                    return
        finally:
            conn.close()

    def _start_writer(self) -> None:
        if self._writer is None:
            self._writer = threading.Thread(target=self._writer_loop, name="cai-store-writer", daemon=True)
            self._writer.start()

    async def write(self, op: Op) -> None:
        """Run `op(conn)` inside a committed transaction; returns once it (and all queued before) is durable."""
        self._start_writer()
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        self._queue.put((op, fut, loop))
        await fut

    def enqueue(self, op: Op) -> None:
        """Queue `op` without waiting; a failure surfaces at the next awaited write."""
        self._start_writer()
        self._queue.put((op, None, None))

    async def flush(self) -> None:
        """Wait until everything queued so far is committed."""
        await self.write(lambda c: None)

    async def keep_up(self) -> None:
        """Wait for the writer if more than `MAX_BACKLOG` writes are queued (e.g. during a WAL
        checkpoint), so memory stays flat when the model answers faster than the disk commits."""
        if self._queue.qsize() > self.MAX_BACKLOG:
            await self.flush()

    def write_now(self, op: Op) -> None:
        """Synchronous write from outside the event loop (set-up, CLI commands)."""
        self._read.execute("BEGIN IMMEDIATE")
        try:
            op(self._read)
            self._read.execute("COMMIT")
        except BaseException:
            self._read.execute("ROLLBACK")
            raise

    def close(self) -> None:
        if self._writer is not None:
            self._queue.put(None)
            self._writer.join()
            self._writer = None
        self._read.close()

    # -- meta ----------------------------------------------------------------------------
    def get_meta(self, key: str, default: Any = None) -> Any:
        row = self._read.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return json.loads(row[0]) if row else default

    def set_meta(self, key: str, value: Any) -> None:
        blob = json.dumps(value, sort_keys=True)
        self.write_now(lambda c: c.execute("INSERT OR REPLACE INTO meta VALUES(?,?)", (key, blob)))

    # -- records and steps ---------------------------------------------------------------
    def statuses(self) -> dict[str, str]:
        return dict(self._read.execute("SELECT id, status FROM records"))

    def steps(self, record_id: str) -> list[dict[str, Any]]:
        rows = self._read.execute("SELECT seq, kind, round, data FROM steps WHERE record_id=? ORDER BY seq",
                                  (record_id,))
        return [{"seq": s, "kind": k, "round": r, **json.loads(d)} for s, k, r, d in rows]

    def add_record(self, idx: int, rid: str, messages: list[dict[str, str]], extra: dict[str, Any]) -> None:
        m, e = json.dumps(messages, ensure_ascii=False), json.dumps(extra, ensure_ascii=False)
        self.enqueue(lambda c: c.execute(
            "INSERT INTO records(idx,id,messages,extra,status,updated) VALUES(?,?,?,?,'pending',?) "
            "ON CONFLICT(id) DO UPDATE SET idx=excluded.idx", (idx, rid, m, e, time.time())))

    def add_step(self, rid: str, seq: int, kind: str, rnd: int, data: dict[str, Any],
                 status: str | None = None) -> None:
        blob = json.dumps(data, ensure_ascii=False)
        now = time.time()

        def op(c: sqlite3.Connection) -> None:
            c.execute("INSERT OR REPLACE INTO steps VALUES(?,?,?,?,?,?)", (rid, seq, kind, rnd, blob, now))
            if status:
                c.execute("UPDATE records SET status=?, updated=? WHERE id=?", (status, now, rid))

        self.enqueue(op)

    def set_status(self, rid: str, status: str) -> None:
        self.enqueue(lambda c: c.execute("UPDATE records SET status=?, updated=? WHERE id=?",
                                             (status, time.time(), rid)))

    def add_error(self, rid: str, stage: str, error: BaseException) -> None:
        from cai.providers.base import redact

        msg = redact(str(error))[:2000]

        def op(c: sqlite3.Connection) -> None:
            c.execute("INSERT INTO errors(record_id,stage,error_class,message,created) VALUES(?,?,?,?,?)",
                      (rid, stage, type(error).__name__, msg, time.time()))
            c.execute("UPDATE records SET status='failed', updated=? WHERE id=?", (time.time(), rid))

        self.enqueue(op)

    # -- calls ---------------------------------------------------------------------------
    def get_call(self, key: str) -> Completion | None:
        row = self._read.execute("SELECT response FROM calls WHERE key=?", (key,)).fetchone()
        return Completion.model_validate_json(row[0]) if row else None

    def add_call(self, key: str, role: str, model: str, comp: Completion) -> None:
        blob = comp.model_dump_json()
        self.enqueue(lambda c: c.execute(
            "INSERT OR REPLACE INTO calls VALUES(?,?,?,?,?,?,?)",
            (key, role, model, blob, comp.tokens_in, comp.tokens_out, time.time())))

    # -- reading for exports and status --------------------------------------------------
    def iter_records(self) -> Iterator[dict[str, Any]]:
        """Records in input order with their steps (one record in memory at a time)."""
        cur = self._read.execute("SELECT idx, id, messages, extra, status FROM records ORDER BY idx")
        for idx, rid, messages, extra, status in cur:
            yield {"idx": idx, "id": rid, "messages": json.loads(messages), "extra": json.loads(extra),
                   "status": status, "steps": self.steps(rid)}

    def counts(self) -> dict[str, int]:
        return dict(self._read.execute("SELECT status, COUNT(*) FROM records GROUP BY status"))

    def token_totals(self) -> dict[str, dict[str, int]]:
        rows = self._read.execute("SELECT role, COUNT(*), SUM(tokens_in), SUM(tokens_out) FROM calls GROUP BY role")
        return {r: {"calls": n, "tokens_in": ti or 0, "tokens_out": to or 0} for r, n, ti, to in rows}

    def errors(self, last: int = -1) -> list[dict[str, Any]]:
        """Error rows, oldest first; only the `last` N when given."""
        rows = self._read.execute("SELECT record_id, stage, error_class, message FROM "
                                  "(SELECT * FROM errors ORDER BY n DESC LIMIT ?) ORDER BY n", (last,))
        return [{"id": r, "stage": s, "error_class": c, "message": m} for r, s, c, m in rows]

    def error_count(self) -> int:
        return self._read.execute("SELECT COUNT(*) FROM errors").fetchone()[0]


def _resolve(fut: asyncio.Future[None], error: BaseException | None) -> None:
    if fut.done():
        return
    if error is None:
        fut.set_result(None)
    else:
        fut.set_exception(error)
