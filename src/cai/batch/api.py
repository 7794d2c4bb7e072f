"""The batch job library: `submit`, `tick`, `status`, `cancel` (and their async forms). `cai batch …` is a thin
layer over these. Nothing here prints or exits; failures are `cai.errors` exceptions.

    from cai import batch
    batch.submit("prompts.jsonl", out="runs/nightly", model="openai:gpt-4o-mini", rounds=1)
    batch.tick("runs/nightly").exit_code      # from cron, until the job is complete
    batch.tick("runs/nightly", max_cost=20)   # a new budget (USD), kept by later ticks
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from cai import constitution as constitution_mod
from cai.api import Prompts, _input_file, manifest_extras
from cai.batch.apis import batch_api, refuse_without_batch_api
from cai.batch.budget import JobBudget, with_max_cost
from cai.batch.job import PAUSED, BatchJob, TickReport
from cai.batch.ledger import OPEN_STATES, Ledger
from cai.core.records import InputRecord, scan_input, scanned_records
from cai.errors import ConfigMismatch, InputError
from cai.read.export import budget_info, estimated_cost, export_run, run_settings
from cai.redact import MASK, redact
from cai.runs import admit, normalize_out, open_session, run_models
from cai.settings import RunSettings
from cai.store import Store
from cai.store.lock import running_pid


def _role_specs(settings: RunSettings) -> dict[str, str]:
    """The model spec of every role the settings name (a plugin's own models are checked once it is built)."""
    specs = settings.models.specs()
    if settings.scoring is not None and settings.scoring.grader:
        specs["grader"] = settings.scoring.grader
    if settings.labels is not None and settings.labels.judge:
        specs["judge"] = settings.labels.judge
    return specs


def _check_models(models: dict[str, Any], retries: int) -> None:
    for model in models.values():
        batch_api(model, retries)  # InputError for a model without a batch API


def cost_so_far(store: Store) -> float | None:
    """The job's estimated USD so far: every call it paid for, batch calls at the batch price, by the price table
    the run stored (`estimated_cost`; None if a price is unknown). The one figure `tick` and `status` report."""
    return estimated_cost(store, run_settings(store))


async def _finish(job: BatchJob, report: TickReport, settings: RunSettings, budget_changed: bool = False
                  ) -> TickReport:
    """Export like `cai run` once every record is done or failed, or the budget stopped the job (again only when
    something changed); the cost so far and the budget."""
    report.estimated_cost_usd = cost_so_far(job.store)
    report.budget = budget_info(job.store, settings)
    ended = report.complete or report.budget_stopped
    if ended and (report.progressed or budget_changed or not (job.store.run_dir / "manifest.json").exists()):
        report.manifest = await asyncio.to_thread(export_run, job.store, settings.export.format,
                                                  extras=manifest_extras())
    return report


async def asubmit(prompts: Prompts, *, out: str | os.PathLike[str] | None = None, restart: bool = False,
                  command: list[str] | None = None, **options: Any) -> TickReport:
    """Validate the input as `cai.arun` does, then submit the calls every record not yet done needs next
    (its first stage, for a new record) as one provider batch per model, and return without waiting.

    `options` are `cai.arun`'s (model, rounds, fewshot, max_tokens, rbr, …). The run folder is an ordinary
    run: the same input and options resume it, a file that only grew adds its new rows, and a run stopped by
    `cancel` goes on. Further passes: `tick`."""
    with _input_file(prompts, out) as (path, folder):
        settings = RunSettings.from_options(input=path, out=normalize_out(folder), **options)
        refuse_without_batch_api(_role_specs(settings), {k for k, v in options.items() if v is not None})
        const = constitution_mod.load(settings.loop.constitution)
        scan = await asyncio.to_thread(scan_input, settings.io.input, settings.io.limit)
        models, plugins = run_models(settings, const)
        _check_models(models, settings.execution.max_retries)
        JobBudget.of(settings.execution, {r: m.spec for r, m in models.items()})  # a model without a price
        async with open_session(normalize_out(settings.io.out), models, settings.execution,
                                restart=restart) as session:
            store = session.store
            settings = await admit(store, settings, models, const, scan, plugins)
            store.set_meta(PAUSED, False)
            store.begin_invocation([redact(a) for a in command or []], os.getcwd())
            try:
                job = BatchJob(store, session.engine, settings, const, plugins)
                tick = await job.advance(source=scanned_records(scan), records=scan.records)
                return await _finish(job, tick, settings, options.get("max_cost") is not None)
            finally:
                store.end_invocation()


@contextlib.asynccontextmanager
async def _open_job(out: str | os.PathLike[str], max_cost: float | None = None
                    ) -> AsyncIterator[tuple[BatchJob, RunSettings]]:
    """The batch job stored in `out`, under its run lock, with the models (and base URLs) it was submitted with:
    they are part of every call's cache key, so no other could continue it. `max_cost` replaces the job's budget
    (stored, so later ticks keep it)."""
    run_dir = normalize_out(out)
    store = Store.open_run(run_dir, readonly=True)
    try:
        if not Ledger(store).exists():
            raise InputError("not a batch job (start one with `cai batch submit`)", path=str(run_dir))
        settings = RunSettings.from_stored(store.get_meta("settings"))
        new_budget = max_cost is not None and max_cost != settings.execution.max_cost
        if max_cost is not None and new_budget:
            settings = with_max_cost(settings, max_cost)
        fp = store.get_meta("fingerprint") or {}
    finally:
        store.close()
    const = constitution_mod.load(settings.loop.constitution)
    if const.sha256 != fp.get("constitution_sha256"):
        raise ConfigMismatch(f"the constitution {' + '.join(settings.loop.layers())} changed since the job was "
                             "submitted; restore it to go on", path=str(run_dir))
    stored = fp.get("models") or {}
    # A base URL stored with its credentials masked (never stored) comes from OPENAI_BASE_URL / ANTHROPIC_BASE_URL.
    urls = {r: None if MASK in (m.get("base_url") or "") else m.get("base_url") for r, m in stored.items()}
    models, plugins = run_models(settings, const, urls)
    if {r: m.identity() for r, m in models.items()} != stored:
        if any(u is None and stored[r].get("base_url") for r, u in urls.items()):
            raise ConfigMismatch("the job's base URL has credentials, which are never stored: set OPENAI_BASE_URL "
                                 "(or ANTHROPIC_BASE_URL) to the URL the job was submitted with", path=str(run_dir))
        raise ConfigMismatch("the models differ from the ones the job was submitted with (the local model file "
                             "changed?)", path=str(run_dir))
    _check_models(models, settings.execution.max_retries)
    if new_budget:  # a model without a price is refused before the lock is taken
        JobBudget.of(settings.execution, {r: m.spec for r, m in models.items()})
    async with open_session(run_dir, models, settings.execution, create=False) as session:
        if new_budget:
            session.store.set_meta("settings", settings.model_dump())
        yield BatchJob(session.store, session.engine, settings, const, plugins), settings


async def atick(out: str | os.PathLike[str], *, max_cost: float | None = None,
                command: list[str] | None = None) -> TickReport:
    """One pass of the job in `out` (for cron): store the results of ended batches, submit the next stage of
    the records they made ready (those that fit in the budget), export once every record is done or the budget
    stops the job. Takes the run lock (RunLocked if another tick or `cai run` holds it). Works on the records
    submitted so far; new input rows wait for `submit`. `max_cost` sets a new budget in USD, higher or lower,
    which later ticks keep."""
    async with _open_job(out, max_cost) as (job, settings):
        records = [InputRecord(idx=i, id=r, messages=m, extra=e) for i, r, m, e in job.ledger.pending_records()]
        if not records and not job.ledger.jobs(*OPEN_STATES) and (job.store.run_dir / "manifest.json").exists():
            # a finished job: nothing to do, nothing written
            return TickReport(str(job.store.run_dir), complete=True, estimated_cost_usd=cost_so_far(job.store),
                              budget=budget_info(job.store, settings))
        job.store.begin_invocation([redact(a) for a in command or []], os.getcwd())
        try:
            return await _finish(job, await job.advance(source=records), settings, max_cost is not None)
        finally:
            job.store.end_invocation()


async def acancel(out: str | os.PathLike[str]) -> dict[str, Any]:
    """Cancel the job's open provider batches and stop submitting; finished answers are kept (the next tick
    stores them) and `submit` with the same options resumes the job."""
    async with _open_job(out) as (job, _):
        return {"out": str(job.store.run_dir), **await job.cancel(), "paused": True}


def status(out: str | os.PathLike[str]) -> dict[str, Any]:
    """Where a batch job stands, read-only (safe while a tick runs): records, the stages in flight, every batch
    with its age and counts, requests by outcome, tokens, the estimated cost at the batch price and, with
    `--max-cost`, the budget: limit, spent and reserved by the requests in flight."""
    run_dir = normalize_out(out)
    store = Store.open_run(run_dir, readonly=True)
    try:
        ledger = Ledger(store)
        if not ledger.exists():
            raise InputError("not a batch job (start one with `cai batch submit`)", path=str(run_dir))
        now, counts = time.time(), store.counts()
        jobs = ledger.jobs()
        return {
            "out": str(run_dir), "running_pid": running_pid(Path(run_dir)),
            "paused": bool(store.get_meta(PAUSED, False)),
            "records": {"input": (store.get_meta("input") or {}).get("records", sum(counts.values())),
                        "done": counts.get("done", 0), "failed": counts.get("failed", 0),
                        "waiting": counts.get("pending", 0)},
            "stages": [{"stage": s, "round": r, "batch": st, "requests": n} for s, r, st, n in ledger.in_flight()],
            "batches": [{"batch_id": j.batch_id, "provider": j.provider, "model": j.model, "state": j.state,
                         "provider_status": j.status, "requests": j.requests, "counts": j.counts,
                         "age_s": round(now - j.created, 1) if j.state in OPEN_STATES else None,
                         "created": j.created, "ended": j.ended} for j in jobs],
            "open_batches": sum(j.state in OPEN_STATES for j in jobs),
            "requests": ledger.request_counts(),
            "tokens": store.token_totals(batch=True),
            "estimated_cost_usd": cost_so_far(store),
            "budget": budget_info(store, run_settings(store)),  # None without --max-cost
            "invocations": len(store.invocations()),  # the submits and ticks so far
        }
    finally:
        store.close()


def submit(prompts: Prompts, **options: Any) -> TickReport:
    """`asubmit`, synchronously (not inside a running event loop: use `await asubmit(...)` there)."""
    return asyncio.run(asubmit(prompts, **options))


def tick(out: str | os.PathLike[str], **options: Any) -> TickReport:
    """`atick`, synchronously."""
    return asyncio.run(atick(out, **options))


def cancel(out: str | os.PathLike[str]) -> dict[str, Any]:
    """`acancel`, synchronously."""
    return asyncio.run(acancel(out))
