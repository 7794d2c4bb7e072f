"""The run store's write queue: unawaited writes are committed in order, and `keep_up` bounds the backlog."""

from __future__ import annotations

import asyncio
import threading

from cai.store import Store

DEADLINE_S = 300.0  # only a broken writer thread reaches it; it never decides a passing outcome


def hold_writer(store: Store) -> threading.Event:
    """Queue a write that blocks the writer thread; returns once the writer is inside it (so everything
    queued afterwards stays queued). Set the returned event to let the writer go on."""
    inside, release = threading.Event(), threading.Event()

    def blocked(conn) -> None:
        inside.set()
        release.wait()

    store.enqueue(blocked)
    assert inside.wait(DEADLINE_S), f"the store's writer thread did not start within {DEADLINE_S:g} s"
    return release


def test_keep_up_waits_for_the_writer_when_the_backlog_is_long(tmp_path):
    store = Store(tmp_path)
    store.MAX_BACKLOG = 50
    releases: list[threading.Event] = []

    async def go() -> tuple[int, bool, int, bool, int]:
        releases.append(hold_writer(store))  # the writer is held up (as by a slow checkpoint)
        for i in range(200):
            store.add_record(i, f"r{i}", [{"role": "user", "content": f"q{i}"}], {})
        queued = store._queue.qsize()
        waiting = asyncio.create_task(store.keep_up())
        for _ in range(5):
            await asyncio.sleep(0)
        waited = not waiting.done()  # 200 > MAX_BACKLOG: keep_up cannot return while the writer is held
        releases[0].set()
        await waiting  # returns once the writer has committed everything queued before it
        after = store._queue.qsize()
        committed = len(store.statuses())
        # A short backlog does not wait, even with the writer held up again.
        releases.append(hold_writer(store))
        store.add_record(200, "r200", [{"role": "user", "content": "q200"}], {})
        quick = asyncio.create_task(store.keep_up())
        await asyncio.sleep(0)
        returned = quick.done()
        releases[1].set()
        await quick
        return queued, waited, after, returned, committed

    try:
        queued, waited, after, returned, committed = asyncio.run(go())
    finally:
        for r in releases:
            r.set()
        store.close()
    assert queued == 200 and waited and after == 0 and committed == 200
    assert returned
    reopened = Store(tmp_path)
    try:
        assert sorted(reopened.statuses()) == sorted(f"r{i}" for i in range(201))
    finally:
        reopened.close()
