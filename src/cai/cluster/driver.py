"""The Ray runner (`--engine ray`): the driver shards the records to worker actors in chunks and is the run's one
writer. Every write a worker makes comes back as an op in a stream and is replayed, in order, on the run's store,
so resume, error rows, exports, `cai status` and the report are those of the local engine. A worker that dies
loses only what it had not sent: the records of its chunk that had not ended go to another worker, from their
committed steps, and a call always reaches the store with the step that used it, so no committed call is paid
again."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import secrets
from collections import deque
from dataclasses import fields
from typing import Any

import ray
from ray.exceptions import RayActorError, RayTaskError

from cai.cluster.budget import BudgetActor, RemoteBudget
from cai.cluster.worker import WRITES, Worker
from cai.core.budget import Budget
from cai.core.engine import Engine, RoleStats, Stats
from cai.core.pipeline import Pipeline
from cai.core.records import InputRecord
from cai.errors import CaiError, InputError
from cai.store import Store

MAX_WORKERS = 8  # the default number of workers at most (and the cluster's CPUs)
DEATHS_PER_WORKER = 3  # a run stops once more workers than this many per slot have died
CHUNK_PER_SLOT = 4  # a chunk holds this many records per slot of a worker's concurrency (fewer in a small run)


def connect(address: str | None) -> None:
    """Join the Ray instance this process already has, the cluster at `address` ("auto", HOST:PORT), or start a
    local one."""
    if ray.is_initialized():
        return
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise InputError(f"cannot reach the Ray cluster at {address or 'a new local instance'}: {e}") from None


def _sum(stats: list[Stats]) -> Stats:
    total = Stats()
    for s in stats:
        total.unparsed += s.unparsed
        for role, r in s.roles.items():
            mine = total.role(role)
            for f in fields(RoleStats):
                setattr(mine, f.name, getattr(mine, f.name) + getattr(r, f.name))
    return total


class RayRunner:
    """`runs.Runner` on Ray: `workers` actors (default: the cluster's CPUs, at most 8), each with `concurrency`
    records in flight (the run's `--concurrency` split between them) and an equal share of `--rpm` / `--tpm`."""

    def __init__(self, address: str | None = None, workers: int | None = None) -> None:
        self.address, self.workers = address, workers
        self.token = secrets.token_hex(4)
        self.died = 0  # workers lost during the run (each replaced)

    async def run(self, pipeline: Pipeline, engine: Engine) -> dict[str, int]:
        connect(self.address)
        settings, store = pipeline.s, pipeline.store
        assert isinstance(store, Store)  # the run's own store, which this driver writes for every worker
        n = self.workers or max(1, min(MAX_WORKERS, int(ray.cluster_resources().get("CPU", 1))))
        ex = settings.execution
        per = max(1, -(-ex.concurrency // n))
        share = {"rpm": -(-ex.rpm // n) if ex.rpm else None, "tpm": -(-ex.tpm // n) if ex.tpm else None}
        base_urls = {r: m.base_url for r, m in engine.models.items()}
        actor = ray.remote(Worker)
        spawned = itertools.count()
        budget = engine.budget
        money = None  # the budget actor (--max-cost): one for every worker of this invocation
        if isinstance(budget, Budget):
            money = ray.remote(BudgetActor).options(num_cpus=0, max_concurrency=1000).remote(budget.limit,
                                                                                           budget.total)

        def spawn() -> tuple[Any, str]:
            name = f"cai-worker-{self.token}-{next(spawned)}"
            keeper = RemoteBudget(money, name, budget.rates, budget.limit) if money is not None and budget else None
            return actor.options(name=name, num_cpus=1, max_concurrency=1000).remote(
                settings, pipeline.const, base_urls, per, share["rpm"], share["tpm"], keeper), name

        todo = list(pipeline.todo())
        size = max(1, min(per * CHUNK_PER_SLOT, -(-len(todo) // n)))  # a small run still reaches every worker
        chunks = deque(todo[i:i + size] for i in range(0, len(todo), size))
        calls = ray.put(store.call_responses())
        counts = {"done": 0, "failed": 0, "skipped": pipeline.counts["skipped"], "waiting": 0}
        known = store.statuses()  # as todo() saw them; read again only after a worker died
        latest: dict[int, Stats] = {}  # each worker's counters for the chunk it is on
        ended_chunks = Stats()  # the counters of every chunk that has ended, summed
        fatal: list[BaseException] = []

        def account(slot: int, stats: Stats) -> None:
            latest[slot] = stats
            engine.stats = _sum([ended_chunks, *latest.values()])

        def retire(slot: int) -> None:
            nonlocal ended_chunks
            if slot in latest:
                ended_chunks = _sum([ended_chunks, latest.pop(slot)])

        async def apply(ops: list[tuple[str, tuple[Any, ...], dict[str, Any]]], ended: set[str]) -> None:
            for name, args, kwargs in ops:
                if name not in WRITES:
                    raise RuntimeError(f"a worker sent an unknown store write {name!r}")
                getattr(store, name)(*args, **kwargs)
                if name == "set_status" and args[1] == "done" or name == "add_error_row":
                    status = "done" if name == "set_status" else "failed"
                    ended.add(args[0])
                    counts[status] += 1  # counted here, as stored: a worker that dies never reports its counts
                    pipeline.on_done(status)
            await store.keep_up()

        async def spent_out() -> bool:
            return money is not None and (await money.state.remote())["closed"]

        async def drive(slot: int) -> None:
            nonlocal known
            worker, name = spawn()
            while chunks and not fatal and not await spent_out():
                chunk = chunks.popleft()
                recs: list[InputRecord] = [rec for rec, _ in chunk]
                ended: set[str] = set()
                payload = ({r.id: known[r.id] for r in recs if r.id in known},
                           {r.id: store.steps(r.id) for r in recs if r.id in known})
                try:
                    async for ref in worker.run_chunk.options(num_returns="streaming").remote(recs, *payload, calls):
                        kind, body, stats = await ref
                        account(slot, stats)
                        if kind == "ops":
                            await apply(body, ended)
                        else:
                            counts["waiting"] += body["waiting"]
                            counts["stopped"] = counts.get("stopped", 0) + body.get("stopped", 0)
                    retire(slot)
                except RayActorError as e:  # the worker died: what it sent is stored; the rest goes back in the queue
                    self.died += 1
                    if self.died > DEATHS_PER_WORKER * n:
                        fatal.append(CaiError(f"{self.died} Ray workers died; the last one: {e}"))
                    retire(slot)
                    if money is not None:  # its calls in flight may have been paid: they count, and stop blocking
                        await money.forfeit.remote(name)
                    await store.flush()
                    known = store.statuses()  # what the dead worker's writes added
                    left = [(rec, rec.id in known) for rec in recs if rec.id not in ended]
                    if left:
                        chunks.appendleft(left)
                    worker, name = spawn()
                except RayTaskError as e:  # a fatal error in the pipeline (bad key, endpoint down)
                    cause = getattr(e, "cause", None)
                    fatal.append(cause if isinstance(cause, BaseException) else e.as_instanceof_cause())
            with contextlib.suppress(RayActorError):  # a worker killed after its last chunk has nothing to close
                await worker.close.remote()
            ray.kill(worker)

        await asyncio.gather(*(drive(i) for i in range(n)))
        await store.flush()
        if money is not None:
            state = await money.state.remote()
            store.add_lost_usd(state["lost"])
            if state["closed"]:
                counts["stopped"] = counts.get("stopped", 0) + sum(len(c) for c in chunks)
            ray.kill(money)
        if fatal:
            raise fatal[0]
        counts["workers_lost"] = self.died
        return counts

