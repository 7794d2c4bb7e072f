"""One writer per run folder: an exclusive `flock` on `<run>/run.lock`, held for a whole invocation.

The OS releases the lock when its holder dies, so a lock left by a killed process never blocks.
The file holds the holder's pid (for messages and `cai status`), and is never read for the decision.
Readers (`cai status`, `open_run`) only probe it and never create it.
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

from cai.errors import OutputError, RunLocked

LOCK_NAME = "run.lock"
# A reader's probe holds a shared lock for microseconds; a writer that meets one tries again this long.
PROBE_GRACE_S = 0.5


def _holder(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        return int(text.split()[0]) if text else None
    except (OSError, ValueError, IndexError):
        return None


class RunLock:
    """`with RunLock(run_dir):` — exclusive for this invocation; RunLocked (exit 3) if another process holds it."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as e:
            raise OutputError(f"cannot create the run lock ({e.strerror})", path=str(self.path)) from e
        deadline = time.monotonic() + PROBE_GRACE_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() < deadline and running_pid(self.path.parent) is None:
                    time.sleep(0.01)  # only a reader's momentary probe: it lets go at once
                    continue
                pid = _holder(fd)
                os.close(fd)
                who = f"pid {pid}" if pid else "another process"
                raise RunLocked(f"this run is in use by another cai process ({who}); wait for it to finish or "
                                "stop it, then run again", path=str(self.path.parent), pid=pid) from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError:
            pass  # the pid is only informative; the lock itself is held
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire() if self._fd is None else self

    def __exit__(self, *exc: object) -> None:
        self.release()


def running_pid(run_dir: Path) -> int | None:
    """The pid of the live process holding `run_dir`'s lock (0 if unknown), or None if none holds it.

    Never creates or writes anything: it opens the lock file read-only and probes with a shared lock.
    """
    path = Path(run_dir) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _holder(fd) or 0
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
