"""The run store: `runs/<name>/run.sqlite` (WAL). Inputs, steps, model calls and errors.

Writes are queued to one writer thread, which commits whatever is queued in one transaction (group
commit), so the event loop never waits on the disk or on the writer. The queue is FIFO: a step is
committed together with, or after, the model calls it used, so after a crash (even kill -9) the store
holds a prefix of each record's work. Writes nobody waits for are gathered for up to `COALESCE_S`
before their commit (fewer, larger transactions), so a kill -9 may lose about that much of the
latest steps; they are simply redone on resume. `flush()` waits until everything queued is committed.
Reads use their own connection.

Each write runs under its own savepoint and names its record: a write that fails on its data (e.g. text
SQLite cannot encode) rolls back only that write, fails only that record (an error row, and none of
its later writes are kept), and never drops another record's writes. A failure of the store itself
(disk full, read-only, I/O error, a failed COMMIT) marks the store `broken`: nothing more is written,
every waiter gets the error, and the engine sends no further model call.

A store is created whole (`sqlite_io.create`): a killed creation leaves none, and a file that holds nothing yet
(e.g. from a creation an older cai was killed in) is taken for a new run, never a damaged one. A store an older
cai made is brought up to date by `cai.store.migrations` when opened for writing; a read-only open reads it as it is.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator
from pathlib import Path
from typing import Any

from cai.calls import Completion
from cai.errors import DamagedStore, InputError, OutputError
from cai.redact import redact
from cai.store import migrations
from cai.store.sink import RecordWriteFailed
from cai.store.sqlite_io import connect, open_store, rollback, store_wide
from cai.store.steps import Step, StoredRecord

DB_NAME = "run.sqlite"
Op = Callable[[sqlite3.Connection], None]
# (op, future or None, its loop or None, the record the write belongs to or None)
Item = tuple[Op, "asyncio.Future[None] | None", Any, "str | None"]


LOST_USD = "budget_lost_usd"  # meta: USD of calls a kill cut off (or a dead Ray worker's), counted as spent


def _add_lost(c: sqlite3.Connection, usd: float) -> None:
    """Add `usd` to the run's lost money (meta `LOST_USD`), inside the caller's transaction."""
    row = c.execute("SELECT value FROM meta WHERE key=?", (LOST_USD,)).fetchone()
    before = json.loads(row[0]) if row else 0.0
    c.execute("INSERT OR REPLACE INTO meta VALUES(?,?)", (LOST_USD, json.dumps(before + usd)))


class Store:
    """One run's state. Use `open()`; call `close()` (or use `async with`)."""

    COALESCE_S = 0.02
    MAX_BACKLOG = 1000

    def __init__(self, run_dir: Path, *, readonly: bool = False, untouched: bool = False) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / DB_NAME
        self.readonly = readonly
        self.broken: OutputError | None = None  # set when the store itself failed; nothing more is written
        self.failed_records: dict[str, str] = {}  # record id -> why its write failed (its later writes are dropped)
        self._queue: queue.SimpleQueue[Item | None] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._invocation: int | None = None
        try:
            self._read = open_store(self.path, migrations.SCHEMA, migrations.TABLES, readonly, migrations.record_all,
                                    untouched=untouched)
            if not readonly:
                migrations.migrate(self._read)  # a store an older cai made; a read-only open writes nothing
        except sqlite3.DatabaseError as e:
            if type(e) is sqlite3.DatabaseError:  # "file is not a database", "disk image is malformed"
                raise DamagedStore(f"damaged store, not a readable cai run ({e})", path=str(self.path)) from e
            raise OutputError(f"cannot open the run store ({e})", path=str(self.path)) from e
        except OSError as e:
            raise OutputError(f"cannot create the run store ({e.strerror})", path=str(self.path)) from e
        self._resolved_col = "resolved" in migrations.columns(self._read, "errors")
        shared = "shared" in migrations.columns(self._read, "calls")
        self._shared = "shared" if shared else "0"  # older stores read as unshared

    @classmethod
    def exists(cls, run_dir: Path) -> bool:
        return (Path(run_dir) / DB_NAME).is_file()

    @classmethod
    def open_run(cls, run_dir: Path, *, readonly: bool = False, untouched: bool = False) -> Store:
        """The store of an existing run; InputError naming the folder if it holds none, DamagedStore if
        it cannot be read. `readonly` opens a committed snapshot that never writes (status, readers); `untouched`
        also leaves no SQLite side file behind (`sqlite_io.connect`)."""
        if not cls.exists(run_dir):
            raise InputError("not a cai run (no run.sqlite)", path=str(run_dir))
        return cls(run_dir, readonly=readonly, untouched=untouched)

    # -- writing -------------------------------------------------------------------------
    def _writer_loop(self) -> None:
        conn = connect(self.path)
        try:
            while True:
                item = self._queue.get()
                if item is not None and item[1] is None and self.broken is None:
                    time.sleep(self.COALESCE_S)  # nobody waits on it: let more writes queue up
                batch = [item]
                while True:
                    try:
                        batch.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
                ops = [b for b in batch if b is not None]
                error: BaseException | None = self.broken  # once broken, nothing more is written
                if error is None and ops:
                    try:
                        self._commit(conn, ops)
                    except BaseException as e:  # noqa: BLE001 - the store itself failed: handed to every waiter
                        rollback(conn)
                        error = self._break(e)
                for _, fut, loop, _ in ops:
                    if fut is not None:
                        loop.call_soon_threadsafe(_resolve, fut, error)
                if None in batch:
                    return
        finally:
            conn.close()

    def _commit(self, conn: sqlite3.Connection, ops: list[Item]) -> None:
        """One transaction; each write under a savepoint, so a write that fails on its data fails its record only."""
        conn.execute("BEGIN IMMEDIATE")
        for op, _, _, rid in ops:
            if rid is not None and rid in self.failed_records:
                continue  # that record already failed in the store: keep none of its later writes
            conn.execute("SAVEPOINT w")
            try:
                op(conn)
            except Exception as e:
                if store_wide(e) or rid is None:
                    raise
                conn.execute("ROLLBACK TO w")
                self.failed_records[rid] = f"{type(e).__name__}: {e}"
                _record_error(conn, rid, "store", type(e).__name__, str(e))
            conn.execute("RELEASE w")
        if self._invocation is not None:  # a heartbeat: a killed invocation's wall time ends at its last commit
            conn.execute("UPDATE invocations SET ended=? WHERE n=?", (time.time(), self._invocation))
        conn.execute("COMMIT")

    def _break(self, error: BaseException) -> OutputError:
        """Mark the store broken by `error`; returns the one-line error every later write gets."""
        reason = getattr(error, "strerror", None) or str(error)
        self.broken = OutputError(
            f"cannot write the run store ({reason}); the run stopped. Everything committed before this is "
            "kept; model calls answered since the last commit were not stored and will be made again on resume",
            path=str(self.path))
        self.broken.__cause__ = error
        return self.broken

    def _start_writer(self) -> None:
        if self._writer is None:
            self._writer = threading.Thread(target=self._writer_loop, name="cai-store-writer", daemon=True)
            self._writer.start()

    async def write(self, op: Op, record: str | None = None) -> None:
        """Run `op(conn)` inside a committed transaction; returns once it (and all queued before) is durable."""
        if self.broken is not None:
            raise self.broken
        self._start_writer()
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        self._queue.put((op, fut, loop, record))
        await fut

    def enqueue(self, op: Op, record: str | None = None) -> None:
        """Queue `op` (a write for `record`, if given) without waiting. If it fails on its data, `record`
        fails (see `check_record`); if the store fails, `broken` is set and the next awaited write raises."""
        self._start_writer()
        self._queue.put((op, None, None, record))

    async def flush(self) -> None:
        """Wait until everything queued so far is committed."""
        await self.write(lambda c: None)

    async def keep_up(self) -> None:
        """Wait for the writer if more than `MAX_BACKLOG` writes are queued (e.g. during a WAL
        checkpoint), so memory stays flat when the model answers faster than the disk commits."""
        if self._queue.qsize() > self.MAX_BACKLOG:
            await self.flush()

    def write_now(self, op: Op) -> None:
        """Synchronous write from outside the event loop (set-up, CLI commands); OutputError if the store fails."""
        if self.broken is not None:
            raise self.broken
        try:
            self._read.execute("BEGIN IMMEDIATE")
            op(self._read)
            self._read.execute("COMMIT")
        except sqlite3.Error as e:
            rollback(self._read)
            if store_wide(e):
                raise self._break(e) from e
            raise
        except BaseException:
            rollback(self._read)
            raise

    # -- invocations ---------------------------------------------------------------------
    def begin_invocation(self, argv: list[str], cwd: str) -> None:
        """Record this process's invocation (command line as typed, and where); its `ended` moves with every
        commit, so a killed invocation keeps its wall time up to its last commit."""
        now, blob = time.time(), json.dumps({"argv": argv, "cwd": cwd}, ensure_ascii=False)
        cur: list[int] = []
        self.write_now(lambda c: cur.append(c.execute(
            "INSERT INTO invocations(pid,started,ended,command) VALUES(?,?,?,?)",
            (os.getpid(), now, now, blob)).lastrowid or 0))
        self._invocation = cur[0]

    def end_invocation(self) -> None:
        if self._invocation is None or self.broken is not None:
            return
        n, self._invocation = self._invocation, None
        self.write_now(lambda c: c.execute("UPDATE invocations SET ended=? WHERE n=?", (time.time(), n)))

    def invocations(self) -> list[dict[str, Any]]:
        if "invocations" not in {r[0] for r in self._read.execute("SELECT name FROM sqlite_master")}:
            return []
        rows = self._read.execute("SELECT pid, started, ended, command FROM invocations ORDER BY n")
        return [{"pid": p, "started": s, "ended": e, "command": json.loads(c)} for p, s, e, c in rows]

    def close(self) -> None:
        if self._writer is not None:
            self._queue.put(None)
            self._writer.join()
            self._writer = None
        self._read.close()

    def check_record(self, rid: str) -> None:
        """Raise RecordWriteFailed if a write of record `rid` failed in the store (stop spending on it)."""
        why = self.failed_records.get(rid)
        if why is not None:
            raise RecordWriteFailed(f"record {rid!r} could not be stored: {why}")

    # -- meta ----------------------------------------------------------------------------
    def get_meta(self, key: str, default: Any = None) -> Any:
        row = self._read.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return json.loads(row[0]) if row else default

    def set_meta(self, key: str, value: Any) -> None:
        blob = json.dumps(value, sort_keys=True)
        self.write_now(lambda c: c.execute("INSERT OR REPLACE INTO meta VALUES(?,?)", (key, blob)))

    def input_lines(self, upto: int) -> Iterator[bytes]:
        """The stored hashes of the input's lines 1..`upto` (`records.InputScan.line_hashes`), in order."""
        with contextlib.closing(self._read.execute("SELECT hash FROM input_lines WHERE n<=? ORDER BY n",
                                                   (upto,))) as cur:
            yield from (h for (h,) in cur)

    def save_input(self, fingerprint: dict[str, Any], lines: Iterable[tuple[int, bytes]]) -> None:
        """Store the fingerprint and the input's (line number, hash) `lines` in one transaction."""
        blob = json.dumps(fingerprint, sort_keys=True)
        self.write_now(lambda c: (c.execute("INSERT OR REPLACE INTO meta VALUES('fingerprint',?)", (blob,)),
                                  c.executemany("INSERT OR REPLACE INTO input_lines VALUES(?,?)", lines)))

    # -- records and steps ---------------------------------------------------------------
    def statuses(self) -> dict[str, str]:
        return dict(self._read.execute("SELECT id, status FROM records"))

    def pending_records(self) -> list[tuple[int, str, list[dict[str, str]], dict[str, Any]]]:
        """(idx, id, messages, extra) of the records neither done nor failed, in input order."""
        rows = self._read.execute("SELECT idx, id, messages, extra FROM records WHERE status='pending' ORDER BY idx")
        return [(i, r, json.loads(m), json.loads(e)) for i, r, m, e in rows]

    def has_step(self, kind: str) -> bool:
        """Whether any record has a step of `kind`."""
        return self._read.execute("SELECT 1 FROM steps WHERE kind=? LIMIT 1", (kind,)).fetchone() is not None

    def steps(self, record_id: str) -> list[Step]:
        rows = self._read.execute("SELECT seq, kind, round, data FROM steps WHERE record_id=? ORDER BY seq",
                                  (record_id,))
        return [Step.from_row(*row) for row in rows]

    def add_record(self, idx: int, rid: str, messages: list[dict[str, str]], extra: dict[str, Any]) -> None:
        m, e = json.dumps(messages, ensure_ascii=False), json.dumps(extra, ensure_ascii=False)
        self.enqueue(lambda c: c.execute(
            "INSERT INTO records(idx,id,messages,extra,status,updated) VALUES(?,?,?,?,'pending',?) "
            "ON CONFLICT(id) DO UPDATE SET idx=excluded.idx", (idx, rid, m, e, time.time())), rid)

    def add_step(self, rid: str, seq: int, kind: str, rnd: int, data: dict[str, Any],
                 status: str | None = None) -> None:
        blob = json.dumps(data, ensure_ascii=False)
        now = time.time()

        def op(c: sqlite3.Connection) -> None:
            c.execute("INSERT OR REPLACE INTO steps VALUES(?,?,?,?,?,?)", (rid, seq, kind, rnd, blob, now))
            if status:
                c.execute("UPDATE records SET status=?, updated=? WHERE id=?", (status, now, rid))

        self.enqueue(op, rid)

    def set_status(self, rid: str, status: str) -> None:
        """Set a record's status; `done` also resolves the error rows of its earlier failed attempts."""
        def op(c: sqlite3.Connection) -> None:
            c.execute("UPDATE records SET status=?, updated=? WHERE id=?", (status, time.time(), rid))
            if status == "done":
                c.execute("UPDATE errors SET resolved=1 WHERE record_id=?", (rid,))

        self.enqueue(op, rid)

    def add_error(self, rid: str, stage: str, error: BaseException) -> None:
        self.add_error_row(rid, stage, type(error).__name__, str(error))

    def add_error_row(self, rid: str, stage: str, error_class: str, message: str) -> None:
        """An error row for `rid` (which is marked failed), from the error's class name and message."""
        self.enqueue(lambda c: _record_error(c, rid, stage, error_class, message), rid)

    # -- calls ---------------------------------------------------------------------------
    def get_call(self, key: str) -> Completion | None:
        row = self._read.execute("SELECT response FROM calls WHERE key=?", (key,)).fetchone()
        return Completion.model_validate_json(row[0]) if row else None

    def call_responses(self) -> dict[str, str]:
        """The response JSON of every stored call, by key."""
        return dict(self._read.execute("SELECT key, response FROM calls"))

    def add_call(self, key: str, role: str, model: str, comp: Completion, record: str | None = None,
                 shared: bool = False) -> None:
        """Store a call's answer; `shared`: taken from the shared call cache (paid by another run). Its budget hold
        (if any) goes in the same transaction: from then on the call's real cost counts."""
        blob = comp.model_dump_json()

        def op(c: sqlite3.Connection) -> None:
            c.execute("INSERT OR REPLACE INTO calls VALUES(?,?,?,?,?,?,?,?)",
                      (key, role, model, blob, comp.tokens_in, comp.tokens_out, time.time(), int(shared)))
            c.execute("DELETE FROM budget_holds WHERE key=?", (key,))

        self.enqueue(op, record)

    # -- the budget (--max-cost, cai.core.budget) ------------------------------------------
    async def hold(self, key: str, usd: float) -> None:
        """Note, durably, that call `key` is about to be sent with a worst-case cost of `usd`: if the process dies
        before its answer is stored, the next invocation counts it as spent (`settle_lost_holds`)."""
        await self.write(lambda c: c.execute("INSERT OR REPLACE INTO budget_holds VALUES(?,?,?)",
                                             (key, usd, time.time())))

    def release(self, key: str) -> None:
        """Drop call `key`'s hold: it failed without an answer (a provider does not charge a refused request)."""
        self.enqueue(lambda c: c.execute("DELETE FROM budget_holds WHERE key=?", (key,)))

    def held_usd(self) -> float:
        """USD set aside for calls in flight now (their holds; 0 in a store from before budgets)."""
        try:
            return float(self._read.execute("SELECT COALESCE(SUM(usd), 0) FROM budget_holds").fetchone()[0])
        except sqlite3.OperationalError:  # no such table: an older store opened read-only
            return 0.0

    def lost_usd(self) -> float:
        """USD of calls that may have been paid but were never stored, counted as spent over the run."""
        return float(self.get_meta(LOST_USD, 0.0))

    def add_lost_usd(self, usd: float) -> None:
        """Count `usd` of calls that may have been paid but were never stored as spent, for good (a dead Ray
        worker's reservations)."""
        if usd:
            self.write_now(lambda c: _add_lost(c, usd))

    def settle_lost_holds(self, keep: Collection[str] = ()) -> float:
        """Count the holds a killed invocation left (calls that may have been paid but whose answers were never
        stored) as spent, for good, and drop them; the total so counted over the run (`lost_usd`). The holds of
        the keys in `keep` stay: calls known to be in flight still (requests in a provider batch)."""
        def op(c: sqlite3.Connection) -> None:
            gone = [(k, usd) for k, usd in c.execute("SELECT key, usd FROM budget_holds") if k not in keep]
            if lost := sum(usd for _, usd in gone):
                _add_lost(c, lost)
            c.executemany("DELETE FROM budget_holds WHERE key=?", [(k,) for k, _ in gone])

        self.write_now(op)
        return self.lost_usd()

    # -- reading for exports and status --------------------------------------------------
    def iter_records(self) -> Iterator[StoredRecord]:
        """Records in input order with their steps (one record in memory at a time)."""
        cur = self._read.execute("SELECT idx, id, messages, extra, status FROM records ORDER BY idx")
        for row in cur:
            yield StoredRecord.from_row(*row, self.steps(row[1]))

    def record(self, rid: str) -> StoredRecord | None:
        """Record `rid` with its steps (None if the store has no such record)."""
        row = self._read.execute("SELECT idx, id, messages, extra, status FROM records WHERE id=?", (rid,)).fetchone()
        return None if row is None else StoredRecord.from_row(*row, self.steps(rid))

    def read_calls(self) -> Iterator[tuple[str, str, str, str, int, int, float, int]]:
        """(key, role, model, response JSON, tokens_in, tokens_out, created, shared) for every stored call,
        oldest first."""
        return self._read.execute("SELECT key, role, model, response, tokens_in, tokens_out, created, "
                                  f"{self._shared} FROM calls ORDER BY created")

    def counts(self) -> dict[str, int]:
        return dict(self._read.execute("SELECT status, COUNT(*) FROM records GROUP BY status"))

    def token_totals(self, shared: bool = False, **flags: bool) -> dict[str, dict[str, int]]:
        """Per role: calls and tokens this run paid for (`shared=True`: those taken from the shared cache), with
        the prompt tokens read from / written to the provider's cache (from the response JSON; 0 in older stores).
        `flags`: only the calls whose response has each named boolean field true or false (missing reads false)."""
        where = f"{self._shared}=?"
        args: list[object] = [int(shared)]
        for field, value in flags.items():  # each field's JSON path is bound, never part of the SQL text
            where += " AND COALESCE(json_extract(response, ?), 0)=?"
            args += [f"$.{field}", int(value)]
        rows = self._read.execute(
            "SELECT role, COUNT(*), SUM(tokens_in), SUM(tokens_out), SUM(json_extract(response, '$.tokens_cached')), "
            f"SUM(json_extract(response, '$.tokens_cache_write')) FROM calls WHERE {where} GROUP BY role", args)
        return {r: {"calls": n, "tokens_in": ti or 0, "tokens_out": to or 0, "tokens_cached": tc or 0,
                    "tokens_cache_write": tw or 0} for r, n, ti, to, tc, tw in rows}

    def errors(self, last: int = -1, open_only: bool = False) -> list[dict[str, Any]]:
        """Error rows, oldest first (only the `last` N when given); `resolved` once the record later succeeded."""
        res = "resolved" if self._resolved_col else "0"
        where = f"WHERE {res}=0" if open_only else ""
        rows = self._read.execute(f"SELECT record_id, stage, error_class, message, {res} FROM "
                                  f"(SELECT * FROM errors {where} ORDER BY n DESC LIMIT ?) ORDER BY n", (last,))
        return [{"id": r, "stage": s, "error_class": c, "message": m, "resolved": bool(v)}
                for r, s, c, m, v in rows]

    def unparsed_verdicts(self) -> int:
        """Critique steps whose reply was not a valid verdict even after the repair request."""
        return self._read.execute("SELECT COUNT(*) FROM steps WHERE kind='critique' AND "
                                  "json_extract(data, '$.parsed') = 0").fetchone()[0]

    def error_count(self, open_only: bool = True) -> int:
        where = "WHERE resolved=0" if open_only and self._resolved_col else ""
        return self._read.execute(f"SELECT COUNT(*) FROM errors {where}").fetchone()[0]


def _record_error(c: sqlite3.Connection, rid: str, stage: str, error_class: str, message: str) -> None:
    """Insert an error row for `rid` and mark it failed (the message made storable whatever it holds)."""
    msg = redact(message)[:2000].encode("utf-8", "replace").decode("utf-8")
    now = time.time()
    c.execute("INSERT INTO errors(record_id,stage,error_class,message,created) VALUES(?,?,?,?,?)",
              (rid, stage, error_class, msg, now))
    c.execute("UPDATE records SET status='failed', updated=? WHERE id=?", (now, rid))


def _resolve(fut: asyncio.Future[None], error: BaseException | None) -> None:
    if fut.done():
        return
    if error is None:
        fut.set_result(None)
    else:
        fut.set_exception(error)
