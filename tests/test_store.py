"""The run store's write queue: unawaited writes are committed in order, and `keep_up` bounds the backlog."""

from __future__ import annotations

import asyncio
import threading

from cai.store import Store


def test_keep_up_waits_for_the_writer_when_the_backlog_is_long(tmp_path):
    store = Store(tmp_path)
    store.MAX_BACKLOG = 50
    gate = threading.Event()

    async def go() -> tuple[int, int, int]:
        store.enqueue(lambda c: gate.wait(5))  # the writer is held up (as by a slow checkpoint)
        for i in range(200):
            store.add_record(i, f"r{i}", [{"role": "user", "content": f"q{i}"}], {})
        queued = store._queue.qsize()
        threading.Timer(0.2, gate.set).start()
        await store.keep_up()  # returns only once the writer has caught up
        after = store._queue.qsize()
        await store.keep_up()  # nothing queued: returns at once
        return queued, after, len(store.statuses())

    try:
        queued, after, committed = asyncio.run(go())
    finally:
        store.close()
    assert queued >= 150 and after == 0 and committed == 200
    reopened = Store(tmp_path)
    try:
        assert sorted(reopened.statuses()) == sorted(f"r{i}" for i in range(200))
    finally:
        reopened.close()
