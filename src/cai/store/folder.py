"""A run folder opened for writing: refuse a foreign folder, move an old run aside on restart, hold the run lock and
open (or create) the store. Every writer of a run goes through `locked_store` (`cai.runs.open_session` adds the
engine)."""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

from cai.errors import InputError, OutputError
from cai.store import DB_NAME, Store
from cai.store.lock import LOCK_NAME, RunLock
from cai.store.sqlite_io import leftovers


def prepare_dir(out: Path, restart: bool) -> None:
    """Refuse a folder that holds other files; with `restart`, move an old run aside (never delete) once no
    other process holds it. OutputError naming the folder if it cannot be created."""
    if out.exists() and not out.is_dir():
        raise InputError("--out exists and is not a folder", path=str(out))
    if out.is_dir() and not Store.exists(out):
        own = {LOCK_NAME, *(p.name for p in leftovers(out / DB_NAME))}  # a run killed before its store was made
        if any(p.name not in own for p in out.iterdir()):
            raise InputError("--out is a folder that is not a cai run (no run.sqlite); refusing to write "
                             "into it", path=str(out))
    if restart and Store.exists(out):
        aside = out.with_name(f"{out.name}.old-{time.strftime('%Y%m%d-%H%M%S')}")
        with RunLock(out):  # a live run keeps its folder: RunLocked (exit 3)
            try:
                shutil.move(str(out), str(aside))
            except OSError as e:
                raise OutputError(f"cannot move the old run aside ({e.strerror})", path=str(out)) from e
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"cannot create the run folder ({e.strerror})", path=str(out)) from e


@contextlib.contextmanager
def locked_store(out: Path, restart: bool = False, *, create: bool = True) -> Iterator[Store]:
    """Prepare `out`, hold its run lock for the whole block, and open (or create) its store: the one way a run's
    store is opened for writing. `create=False` opens only the store of an existing run (InputError naming the
    folder otherwise) and leaves the folder as it is."""
    if not create or Store.exists(out) and not restart:
        Store.open_run(out, readonly=True).close()  # a damaged or foreign store fails before anything is written
    if create:
        prepare_dir(out, restart)
    with RunLock(out):
        store = Store(out) if create and not Store.exists(out) else Store.open_run(out)
        try:
            yield store
        finally:
            store.close()
