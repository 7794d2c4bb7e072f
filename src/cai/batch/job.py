"""One pass of a batch job over a run folder: recover, collect, continue, submit.

The loop is the same `Pipeline` `cai run` uses, over an engine whose calls are not sent but collected
(`Collector`, the engine's `Deferral`): every record goes as far as the answers already stored take it, and
the calls it needs next become the next provider batch (one per model). Results are stored as the same call
rows `cai run` writes, under the same cache keys, so the next pass (or a plain `cai run`) replays them into
steps. A record whose call failed in a batch is sent again in a later batch, up to `max_retries` times. Under a
budget (`--max-cost`) a batch takes only the calls whose worst case fits in what is left (`cai.batch.budget`);
the others wait, with their records, for a higher budget.
"""

from __future__ import annotations

import contextlib
import functools
import json
import re
import secrets
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from cai.batch.apis import BatchAPI, batch_api
from cai.batch.budget import JobBudget
from cai.batch.ledger import History, Job, Ledger, Outcome, error_of
from cai.calls import Completion, Request
from cai.constitution import Constitution
from cai.core.engine import Engine
from cai.core.pipeline import Pipeline
from cai.core.records import InputRecord
from cai.errors import BudgetExhausted, EndpointDown, ProviderError
from cai.providers import Model
from cai.runs import CALLS_IN_FLIGHT, RunPlugins
from cai.settings import RunSettings
from cai.store import Store

EXIT_WAITING = 75  # sysexits' EX_TEMPFAIL: nothing to do until the provider finishes a batch
PAUSED = "batch_paused"  # meta: `cai batch cancel` stopped the job; `cai batch submit` resumes it
MODES = "batch_structured_modes"  # meta: per model spec, the structured-output mode its endpoint accepts
_UNSAFE = re.compile(r"[^A-Za-z0-9_]")


@dataclass
class Queued:
    """A call the pipeline needs and no batch holds: it goes into this pass's batch for its model."""

    role: str
    model: Model
    key: str
    request: Request
    record: str | None
    stage: str
    round: int
    attempt: int
    usd: float | None = None  # its worst case at the batch price (None without prices), held while it is out

    def custom_id(self, token: str, n: int) -> str:
        """`<job token>-<n>-<record id>-<stage>-<round>-<attempt>` for the `n`th request of a batch: unique by
        its first two parts; at most 64 characters of [A-Za-z0-9_-] (Anthropic's rule)."""
        rid = _UNSAFE.sub("_", self.record or "none")[:16]
        return f"{token}-{n}-{rid}-{self.stage}-{self.round}-{self.attempt}"


class Collector:
    """The engine's Deferral in a batch job: queues each call not already in a batch, and ends a call whose
    last batch attempt failed for good (a non-retryable error, or more than `max_retries` failures)."""

    def __init__(self, history: dict[str, History], max_retries: int) -> None:
        self.history = history
        self.max_retries = max_retries
        self.queued: dict[str, Queued] = {}

    def defer(self, role: str, model: Model, key: str, request: Request, record: str | None,
              step: tuple[str, int] | None) -> None:
        if key in self.queued:  # the same call for two records: sent once, answers both
            return
        h = self.history.get(key, History())
        if h.in_flight:
            return
        if h.last_state == "failed":
            err = error_of(h.last_error or {}, model.provider, model.name)
            if not err.retryable or h.failures > self.max_retries:
                raise err
        stage, rnd = step or (role, 0)
        self.queued[key] = Queued(role, model, key, request, record, stage, rnd, h.sent + 1)


@dataclass
class TickReport:
    """What one pass did, and where the job stands (`exit_code` is the cron contract)."""

    out: str
    recovered: int = 0  # batches whose create reply was lost, found again (or found never created)
    stored: int = 0  # answers stored from ended batches
    request_failures: int = 0  # requests that failed inside ended batches (retried up to max_retries)
    submitted: list[dict[str, Any]] = field(default_factory=list)  # batches created in this pass
    done_now: int = 0
    failed_now: int = 0
    waiting: int = 0  # records waiting on a batch
    over_budget: int = 0  # calls not submitted: their worst case did not fit in what is left of --max-cost
    open_batches: int = 0
    paused: bool = False
    complete: bool = False
    estimated_cost_usd: float | None = None  # the run so far, batch calls at the batch price
    budget: dict[str, Any] | None = None  # with --max-cost: the manifest's `budget` (cai.read.export.budget_info)
    manifest: dict[str, Any] | None = None

    @property
    def progressed(self) -> bool:
        return bool(self.recovered or self.stored or self.request_failures or self.submitted or self.done_now
                    or self.failed_now)

    @property
    def budget_stopped(self) -> bool:
        """Calls wait for a higher budget and none is in flight: the job cannot go on without one."""
        return bool(self.over_budget) and not self.open_batches

    @property
    def exit_code(self) -> int:
        """5 (BudgetExhausted's) stopped by the budget; 1 records failed in this pass; 0 progress made or nothing
        more to do; EXIT_WAITING otherwise."""
        if self.budget_stopped:
            return BudgetExhausted.exit_code
        if self.failed_now:
            return 1
        if self.progressed or self.complete or (self.paused and not self.open_batches):
            return 0
        return EXIT_WAITING

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "budget_stopped": self.budget_stopped, "exit_code": self.exit_code}


class BatchJob:
    """A batch job over an open run session (the store and engine of `cai.runs.open_session`)."""

    def __init__(self, store: Store, engine: Engine, settings: RunSettings, const: Constitution,
                 plugins: RunPlugins) -> None:
        self.store, self.engine, self.settings, self.const, self.plugins = store, engine, settings, const, plugins
        self.ledger = Ledger(store)
        self.budget = JobBudget(None)  # set by `advance` (cancelling needs no prices)
        retries = settings.execution.max_retries
        self.apis: dict[str, BatchAPI] = {}
        for model in engine.models.values():
            if model.spec not in self.apis:
                self.apis[model.spec] = batch_api(model, retries)
        modes = store.get_meta(MODES, {})
        for spec, api in self.apis.items():
            api.restore(modes.get(spec))

    async def advance(self, *, source: Iterable[InputRecord] | None = None, records: int | None = None,
                      on_done: Callable[[str], None] | None = None) -> TickReport:
        """Recover lost creates, store the results of ended batches, continue every record as far as they go,
        submit what they need next; `source`/`records` as for Pipeline (default: the run's input file)."""
        report = TickReport(str(self.store.run_dir), paused=bool(self.store.get_meta(PAUSED, False)))
        self.budget = JobBudget.of(self.settings.execution, {r: m.spec for r, m in self.engine.models.items()})
        try:
            await self._recover(report)
            await self._collect(report)
            if not report.paused:
                collector = Collector(self.ledger.history(), self.settings.execution.max_retries)
                self.engine.deferral = collector
                pipeline = Pipeline(self.settings, self.const, self.store, self.engine, on_done, self.plugins.scorer,
                                    records=records, source=source, labeler=self.plugins.labeler)
                counts = await pipeline.run()
                report.done_now, report.failed_now, report.waiting = counts["done"], counts["failed"], counts["waiting"]
                await self._submit(collector, report)
        except ProviderError as e:
            if e.fatal:
                raise
            raise EndpointDown(f"{e} (everything stored is kept; the next tick carries on)", provider=e.provider,
                               model=e.model, status=e.status) from e
        finally:
            if self.store.broken is None:  # a broken store keeps its own error; nothing more can be written
                await self.store.flush()
                self.store.set_meta(CALLS_IN_FLIGHT, self.ledger.calls_in_flight())
        report.open_batches = len(self.ledger.jobs("creating", "open"))
        report.complete = not report.paused and not report.waiting and not report.open_batches
        return report

    async def cancel(self) -> dict[str, Any]:
        """Stop the job: no new batches (until `cai batch submit`), and the open ones cancelled at the provider;
        their finished answers are stored by the next tick. Returns the batch ids cancelled, those that had
        ended already, and how many batches are still being identified after a lost create reply."""
        self.store.set_meta(PAUSED, True)
        out: dict[str, Any] = {"cancelled": [], "ended": [], "unidentified": len(self.ledger.jobs("creating"))}
        for job in self.ledger.jobs("open"):
            try:
                await self.apis[job.model].cancel(job.batch_id or "")
                out["cancelled"].append(job.batch_id)
            except ProviderError as e:
                if e.status != 400:  # 400: it ended meanwhile; the next tick stores its results
                    raise
                out["ended"].append(job.batch_id)
        return out

    async def _recover(self, report: TickReport) -> None:
        known = {j.batch_id for j in self.ledger.jobs() if j.batch_id}
        for job in self.ledger.jobs("creating"):
            found = await self.apis[job.model].find(job, known)
            if found.batch_id is not None:
                self.ledger.update_job(job.n, state="open", batch_id=found.batch_id, note="found by listing")
                report.recovered += 1
                if report.paused:  # cancelled before it was known: cancel it now
                    with contextlib.suppress(ProviderError):
                        await self.apis[job.model].cancel(found.batch_id)
            elif not found.waiting:
                self.ledger.drop_job(job.n)  # never created: its calls are collected again
                report.recovered += 1

    async def _collect(self, report: TickReport) -> None:
        for job in self.ledger.jobs("open"):
            api = self.apis[job.model]
            poll = await api.poll(job.batch_id or "")
            if not poll.ended:
                if (poll.status, poll.counts) != (job.status, job.counts):
                    self.ledger.update_job(job.n, status=poll.status, counts=poll.counts)
                continue
            requests = self.ledger.requests(job.n)
            outcomes: list[Outcome] = []
            async for outcome, comp in api.results(job, requests):
                row = requests.get(outcome.custom_id)
                if row is None or row["state"] != "sent":
                    continue  # not this job's, or a duplicate line
                outcomes.append(outcome)
                if comp is not None:
                    await self._store_answer(row, job, comp)
                    report.stored += 1
                report.request_failures += outcome.state == "failed"
            self.ledger.end_job(job.n, outcomes, poll.status, poll.counts)
            await self.store.flush()
            await api.forget(job)
        modes = {spec: m for spec, api in self.apis.items() if (m := api.remembered()) is not None}
        if modes != self.store.get_meta(MODES, {}):
            self.store.set_meta(MODES, modes)

    async def _store_answer(self, row: dict[str, Any], job: Job, comp: Completion) -> None:
        self.store.add_call(row["key"], row["role"], job.model, comp, row["record"])
        if self.engine.cache is not None:
            await self.engine.cache.aput(row["key"], job.model, comp)

    def _file_uploaded(self, job: int, file_id: str) -> None:
        self.ledger.update_job(job, file_id=file_id)

    def _within_budget(self, collector: Collector, report: TickReport) -> list[Queued]:
        """The queued calls whose worst case fits in what is left of the budget, taken in the order the records
        asked for them (a call that does not fit is passed over: a smaller one after it may still fit);
        `report.over_budget` counts the others. Each call's worst case is set for its hold."""
        left = self.budget.left(self.store, {k for k, h in collector.history.items() if h.in_flight})
        fits = []
        for q in collector.queued.values():
            q.usd = self.budget.worst(q.role, q.request)
            if q.usd is None or q.usd <= left:
                fits.append(q)
                left -= q.usd or 0.0
            else:
                report.over_budget += 1
        return fits

    async def _submit(self, collector: Collector, report: TickReport) -> None:
        """The queued calls that fit in the budget, as one batch per model (more where a batch would pass the
        provider's limits), each stored before it is created and its id stored as soon as the provider returns
        it."""
        await self.store.flush()  # the steps that led to these calls are durable before the batch exists
        groups: dict[str, list[Queued]] = {}
        for q in self._within_budget(collector, report):
            groups.setdefault(q.model.spec, []).append(q)
        for spec, group in groups.items():
            for token, part, items in _chunks(self.apis[spec], group):
                await self._create(self.apis[spec], token, part, items, report)

    async def _create(self, api: BatchAPI, token: str, part: list[Queued], items: list[dict[str, Any]],
                      report: TickReport) -> None:
        rows = [{"custom_id": item["custom_id"], "key": q.key, "role": q.role, "record": q.record, "stage": q.stage,
                 "round": q.round, "attempt": q.attempt, "mode": mode, "usd": q.usd}
                for q, (item, mode) in zip(part, items, strict=True)]
        n = self.ledger.add_job(token, api.provider, api.model.spec, rows)  # before anything is sent
        stages = Counter(f"{q.stage} {q.round}" if q.round else q.stage for q in part)
        try:
            batch_id = await api.create(token, [i for i, _ in items], functools.partial(self._file_uploaded, n))
        except ProviderError as e:
            found = await api.find(self.ledger.job(n), {j.batch_id for j in self.ledger.jobs() if j.batch_id})
            if found.batch_id is None and not found.waiting:
                self.ledger.drop_job(n)
                raise e.with_stage("submit") from e.__cause__
            batch_id = found.batch_id  # created after all (the reply was lost); None: not yet told apart
        if batch_id is not None:
            self.ledger.update_job(n, state="open", batch_id=batch_id)
        report.submitted.append({"batch_id": batch_id, "provider": api.provider, "model": api.model.spec,
                                 "requests": len(part), "stages": dict(stages)})


def _chunks(api: BatchAPI, group: list[Queued]
            ) -> Iterator[tuple[str, list[Queued], list[tuple[dict[str, Any], str | None]]]]:
    """(job token, calls, their batch items with their structured mode) in batches within the API's limits."""
    token, part, items, size = secrets.token_hex(4), [], [], 0
    for q in group:
        item, mode = api.item(q.custom_id(token, len(part)), q.request)
        n = len(json.dumps(item, ensure_ascii=False).encode())
        if part and (len(part) >= api.max_requests or size + n > api.max_bytes):
            yield token, part, items
            token, part, items, size = secrets.token_hex(4), [], [], 0
            item, mode = api.item(q.custom_id(token, 0), q.request)
        part.append(q)
        items.append((item, mode))
        size += n
    if part:
        yield token, part, items
