"""People's review decisions on a run's critiques and pairs: `runs/<name>/reviews.sqlite` (WAL), apart from run.sqlite.

Decisions are the most expensive data in a run folder, so they have their own file, written without the run
lock: a reviewer saves while `cai run` or a batch tick holds the run. Each save is one transaction with
`synchronous=FULL`, so a decision is on disk once `save` returns (a `kill -9` right after loses nothing), and
the busy timeout lets two writers (a review page and a notebook) take turns. The file lives in the run folder,
so `--restart` moves it aside with the run. Its schema changes are named migrations, like the run store's.

One row per (reviewer, item): a reviewer's new decision on an item replaces the old one; saving the same content
again changes nothing (not even its time). `sha256` is the hash of the text the decision was about, so that
readers can tell a decision about text that has since changed (`cai.read.reviews`).
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterable
from dataclasses import astuple, dataclass, fields
from pathlib import Path

from cai.errors import DamagedStore, OutputError
from cai.store import migrations
from cai.store.sqlite_io import open_store, rollback

FILE_NAME = "reviews.sqlite"
SCHEMA = """
CREATE TABLE IF NOT EXISTS decisions(reviewer TEXT NOT NULL, item TEXT NOT NULL, id TEXT NOT NULL,
  round INTEGER NOT NULL, pair TEXT NOT NULL, decision TEXT NOT NULL, edit TEXT, note TEXT, sha256 TEXT NOT NULL,
  time REAL NOT NULL, PRIMARY KEY(reviewer, item, id, round, pair));
"""
TABLES = {"decisions"}
MIGRATIONS: tuple[migrations.Migration, ...] = ()  # every change to SCHEMA after its first version goes here


@dataclass(frozen=True)
class StoredDecision:
    """One decision as stored. `round` is 0 and `pair` "" where they do not apply (a pair; a revision pair)."""

    reviewer: str
    item: str  # "critique" or "pair"
    id: str  # the record's id
    round: int
    pair: str
    decision: str
    edit: str | None
    note: str | None
    sha256: str
    time: float

    @property
    def key(self) -> tuple[str, str, int, str]:
        """The item it is about: (item, record id, round, pair)."""
        return (self.item, self.id, self.round, self.pair)


COLUMNS = ", ".join(f.name for f in fields(StoredDecision))
_CONTENT = ("decision", "edit", "note", "sha256")
UPSERT = (f"INSERT INTO decisions({COLUMNS}) VALUES({', '.join('?' * len(fields(StoredDecision)))}) "
          f"ON CONFLICT(reviewer, item, id, round, pair) DO UPDATE SET "
          + ", ".join(f"{c}=excluded.{c}" for c in (*_CONTENT, "time"))
          + " WHERE " + " OR ".join(f"{c} IS NOT excluded.{c}" for c in _CONTENT))


def _init(conn: sqlite3.Connection) -> None:
    migrations.record_all(conn, MIGRATIONS)


class ReviewStore:
    """The decisions file of the run folder `run_dir`. `readonly` never writes (and reads none where there is no
    file yet); otherwise the file is created on first open. Use as a context manager or call `close()`."""

    def __init__(self, run_dir: Path, *, readonly: bool = False) -> None:
        self.path = Path(run_dir) / FILE_NAME
        try:
            if readonly and not self.path.exists():
                self._conn = sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None)
                self._conn.executescript(SCHEMA)
            else:
                self._conn = open_store(self.path, SCHEMA, TABLES, readonly, _init)
            if not readonly:
                self._conn.execute("PRAGMA synchronous=FULL")  # a saved decision survives a crash of the machine
                migrations.migrate(self._conn, MIGRATIONS)
        except sqlite3.DatabaseError as e:
            if type(e) is sqlite3.DatabaseError:
                raise DamagedStore(f"damaged review decisions file ({e})", path=str(self.path)) from e
            raise OutputError(f"cannot open the review decisions ({e})", path=str(self.path)) from e
        except OSError as e:
            raise OutputError(f"cannot create the review decisions ({e.strerror})", path=str(self.path)) from e

    def __enter__(self) -> ReviewStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def save(self, decisions: Iterable[StoredDecision]) -> int:
        """Store `decisions` in one transaction (all or none; later ones of the same reviewer and item win); the
        number of rows added or changed. OutputError naming the file if it cannot be written."""
        rows = [astuple(d) for d in decisions]
        try:
            self._conn.execute("BEGIN IMMEDIATE")
            changed = 0
            for row in rows:
                changed += self._conn.execute(UPSERT, row).rowcount
            self._conn.execute("COMMIT")
        except sqlite3.Error as e:
            rollback(self._conn)
            raise OutputError(f"cannot save the review decisions ({e})", path=str(self.path)) from e
        return changed

    def decisions(self) -> list[StoredDecision]:
        """Every stored decision, oldest first."""
        try:
            rows = self._conn.execute(f"SELECT {COLUMNS} FROM decisions ORDER BY time, rowid").fetchall()
        except sqlite3.Error as e:
            raise OutputError(f"cannot read the review decisions ({e})", path=str(self.path)) from e
        return [StoredDecision(*r) for r in rows]

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self._conn.close()



