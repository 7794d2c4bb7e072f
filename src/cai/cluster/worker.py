"""The Ray worker: an actor that runs the same `Pipeline` over chunks of records with its own models (a `local`
model loads its own instance) and its own concurrency, and streams every store write back to the driver, the
run's one writer."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from cai.calls import Completion
from cai.cluster.budget import RemoteBudget
from cai.constitution import Constitution
from cai.core.engine import Engine, Stats
from cai.core.pipeline import Pipeline
from cai.core.records import InputRecord
from cai.runs import run_models
from cai.settings import RunSettings
from cai.store.callcache import CallCache
from cai.store.steps import Step

# The store writes the driver replays, in order, on the run's store (the only Store methods a worker calls).
WRITES = frozenset({"add_record", "add_step", "set_status", "add_error_row", "add_call"})


class StoreProxy:
    """The `RecordSink` of the pipeline and the engine inside a worker. Reads come from the chunk (statuses and
    committed steps of its records) and from the run's stored calls as the invocation began, plus the calls made
    here; writes become `(method, args, kwargs)` ops, handed over as one batch whenever a step, status or error
    is written, so a call always travels with the step that used it."""

    def __init__(self, statuses: dict[str, str], steps: dict[str, list[Step]],
                 calls: dict[str, str]) -> None:
        self._statuses, self._steps, self._calls = statuses, steps, calls
        self._made: dict[str, Completion] = {}
        self.ops: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []
        self.batches: asyncio.Queue[list[tuple[str, tuple[Any, ...], dict[str, Any]]]] = asyncio.Queue()
        self.broken: BaseException | None = None

    # reads
    def statuses(self) -> dict[str, str]:
        return dict(self._statuses)

    def steps(self, record_id: str) -> list[Step]:
        return list(self._steps.get(record_id, []))

    def get_call(self, key: str) -> Completion | None:
        if key in self._made:
            return self._made[key]
        blob = self._calls.get(key)
        return Completion.model_validate_json(blob) if blob is not None else None

    def check_record(self, rid: str) -> None:
        """A write that fails on its data fails the record on the driver's store, which then drops its later
        writes; here every record may go on."""

    # writes
    def _op(self, name: str, *args: Any, ship: bool = False, **kwargs: Any) -> None:
        self.ops.append((name, args, kwargs))
        if ship:
            self.ship()

    def ship(self) -> None:
        if self.ops:
            self.batches.put_nowait(self.ops)
            self.ops = []

    def add_record(self, idx: int, rid: str, messages: list[dict[str, str]], extra: dict[str, Any]) -> None:
        self._op("add_record", idx, rid, messages, extra)

    def add_call(self, key: str, role: str, model: str, comp: Completion, record: str | None = None,
                 shared: bool = False) -> None:
        self._made[key] = comp
        self._op("add_call", key, role, model, comp, record, shared)

    def add_step(self, rid: str, seq: int, kind: str, rnd: int, data: dict[str, Any],
                 status: str | None = None) -> None:
        self._op("add_step", rid, seq, kind, rnd, data, status, ship=True)

    def set_status(self, rid: str, status: str) -> None:
        self._op("set_status", rid, status, ship=True)

    def add_error(self, rid: str, stage: str, error: BaseException) -> None:
        self._op("add_error_row", rid, stage, type(error).__name__, str(error), ship=True)

    async def hold(self, key: str, usd: float) -> None:
        """On Ray the budget actor holds each call's reservation (cai.cluster.budget), not the store."""

    def release(self, key: str) -> None:
        """See `hold`."""

    async def flush(self) -> None:
        self.ship()

    async def keep_up(self) -> None:
        self.ship()


class Worker:
    """A worker actor's state (the driver wraps this class with `ray.remote`): the run's settings, constitution and
    models, and one engine kept across chunks (its pacing and AIMD caps learn as it goes); with `--max-cost`, the
    engine asks the run's budget actor before each call (`cai.cluster.budget`)."""

    def __init__(self, settings: RunSettings, const: Constitution, base_urls: dict[str, str | None],
                 concurrency: int, rpm: int | None, tpm: int | None, budget: RemoteBudget | None = None) -> None:
        self.settings, self.const = settings, const
        self.models, self.plugins = run_models(settings, const, base_urls)
        self.cache = CallCache(settings.execution.cache) if settings.execution.cache else None
        self.concurrency = concurrency
        self.engine = Engine(StoreProxy({}, {}, {}), self.models,
                             max_retries=settings.execution.max_retries, concurrency=concurrency, rpm=rpm, tpm=tpm,
                             cache=self.cache, budget=budget)

    def ready(self) -> bool:
        return True

    async def run_chunk(self, records: list[InputRecord], statuses: dict[str, str],
                        steps: dict[str, list[Step]], calls: dict[str, str]) -> AsyncIterator[Any]:
        """Run the pipeline over `records`; yields ("ops", [op, ...], stats) as writes happen, then ("done",
        counts, stats). A fatal error (e.g. bad credentials) is raised after the writes made before it."""
        proxy = StoreProxy(statuses, steps, calls)
        self.engine.store = proxy
        self.engine.stats = Stats()
        settings = self.settings.model_copy(update={"execution": self.settings.execution.model_copy(
            update={"concurrency": self.concurrency})})
        pipeline = Pipeline(settings, self.const, proxy, self.engine, scorer=self.plugins.scorer,
                            labeler=self.plugins.labeler, source=records)
        task = asyncio.ensure_future(pipeline.run())
        while True:
            batch = asyncio.ensure_future(proxy.batches.get())
            await asyncio.wait({task, batch}, return_when=asyncio.FIRST_COMPLETED)
            if not batch.done():
                batch.cancel()
                break
            yield ("ops", batch.result(), self.engine.stats)
        proxy.ship()
        while not proxy.batches.empty():
            yield ("ops", proxy.batches.get_nowait(), self.engine.stats)
        counts = task.result()
        yield ("done", counts, self.engine.stats)

    async def close(self) -> None:
        await self.engine.aclose()
        if self.cache is not None:
            self.cache.close()
