"""`--engine ray` on a local Ray cluster (2 CPUs) against the loopback OpenAI server with the real SDK: the same
exports as the local engine, and a worker killed mid-run loses nothing and pays for nothing twice."""

from __future__ import annotations

import collections
import json
import threading
from pathlib import Path

import pytest

import cai
from cai.read.export import EXPORTS
from cai.store import Store
from helpers import cai as cai_cli
from servers import StubServer

ray = pytest.importorskip("ray")

PROMPTS = [f"Question {i}: how do I {verb} a {thing}?" for i, (verb, thing) in enumerate(
    (v, t) for v in ("fix", "paint", "sell", "clean", "move") for t in ("bike", "table", "fence", "kettle",
                                                                    "window", "boat", "lamp", "roof"))]


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def options(srv: StubServer) -> dict:
    return {"model": "openai:stub", "base_url": srv.url, "rounds": 1, "max_tokens": 16, "seed": 3,
            "concurrency": 8, "max_retries": 2}


def exports(run: Path) -> dict[str, bytes]:
    return {name: (run / f"{name}.jsonl").read_bytes() for name in EXPORTS}


def stored_keys(run: Path) -> int:
    store = Store.open_run(run, readonly=True)
    try:
        return len(store.call_responses())
    finally:
        store.close()


def test_ray_gives_the_exports_of_the_local_engine(tmp_path, cluster):
    assert len(PROMPTS) == 40
    with StubServer() as srv:
        local = cai.run(PROMPTS, out=tmp_path / "local", **options(srv))
        local_requests = srv.count()
        srv.reset()
        dist = cai.run(PROMPTS, out=tmp_path / "ray", engine="ray", workers=2, **options(srv))
        assert srv.count() == local_requests == dist.invocation["calls"]
        again = cai.run(PROMPTS, out=tmp_path / "ray", engine="ray", workers=2, **options(srv))  # nothing left to do
        assert srv.count() == local_requests and again.invocation["calls"] == 0 and again.invocation["skipped"] == 40
    assert exports(dist.path) == exports(local.path)
    assert dist.invocation["done"] == 40 and dist.invocation["workers_lost"] == 0
    status = cai_cli("status", dist.path, "--json")
    assert status.exit_code == 0 and json.loads(status.stdout)["records"]["done"] == 40


def test_a_killed_worker_loses_nothing_and_pays_nothing_twice(tmp_path, cluster):
    with StubServer(latency=0.05) as srv:
        local = cai.run(PROMPTS, out=tmp_path / "local", **options(srv))
        srv.reset()
        result: dict = {}

        def go() -> None:
            try:
                result["run"] = cai.run(PROMPTS, out=tmp_path / "ray", engine="ray", workers=2, **options(srv))
            except BaseException as e:  # handed to the test thread below
                result["error"] = e

        t = threading.Thread(target=go)
        t.start()
        srv.wait_for_requests(30)  # both workers are busy by now: kill one mid-chunk
        workers = sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                         if a["name"].startswith("cai-worker-"))
        assert workers
        ray.kill(ray.get_actor(workers[0]), no_restart=True)
        t.join()
        assert "error" not in result, result.get("error")
        bodies = collections.Counter(json.dumps(r["body"], sort_keys=True) for r in srv.requests
                                     if r["path"].endswith("/chat/completions"))
    run = result["run"]
    assert run.invocation["workers_lost"] == 1 and run.invocation["done"] == 40
    assert exports(run.path) == exports(local.path)  # every record exactly once, as the local engine made it
    ids = [json.loads(x)["id"] for x in (run.path / "sft.jsonl").read_text().splitlines()]
    assert len(ids) == len(set(ids)) == 40
    # Only calls of the dead worker's last moments were sent twice: per slot of its share of --concurrency (4), the
    # call in flight and at most one answered whose step was still on its way to the driver. None it had sent back.
    repaid = sum(n - 1 for n in bodies.values())
    assert max(bodies.values()) <= 2 and repaid <= 2 * 4
    assert sum(bodies.values()) == stored_keys(run.path) + repaid


def test_ray_options_need_the_ray_engine(tmp_path):
    inp = tmp_path / "x.jsonl"
    inp.write_text('{"prompt": "hi"}\n')
    r = cai_cli("run", inp, "--out", tmp_path / "r", "--workers", "2")
    assert r.exit_code == 2 and "need engine='ray'" in r.stderr and not (tmp_path / "r").exists()


def test_an_unusable_endpoint_stops_the_ray_run_as_it_stops_a_local_one(tmp_path, cluster):
    with StubServer() as srv:
        dead_url = srv.url
    r = cai_cli("run", write_prompts(tmp_path), "--out", tmp_path / "r", "--engine", "ray", "--workers", "2",
                "--model", "openai:stub", "--base-url", dead_url, "--max-retries", "0", "--quiet")
    assert r.exit_code == 4 and "openai:stub is unusable" in r.stderr and "Traceback" not in r.stderr


def write_prompts(tmp_path: Path) -> Path:
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps({"id": f"p{i}", "prompt": p}) + "\n" for i, p in enumerate(PROMPTS[:6])))
    return inp


def test_the_shared_call_cache_serves_ray_workers(tmp_path, cluster):
    with StubServer() as srv:
        opts = {**options(srv), "cache": str(tmp_path / "calls.sqlite")}
        first = cai.run(PROMPTS[:8], out=tmp_path / "a", engine="ray", workers=2, **opts)
        sent = srv.count()
        second = cai.run(PROMPTS[:8], out=tmp_path / "b", engine="ray", workers=2, **opts)
        assert srv.count() == sent == first.invocation["calls"]  # the second run paid for nothing
        assert second.invocation["calls"] == 0 and second.invocation["shared_cache_hits"] == sent
    assert exports(second.path) == exports(first.path)


def test_each_ray_worker_runs_its_own_local_model(tmp_path, cluster):
    """The embedded model on Ray: each of the two workers gets a chunk and loads its own instance in its process."""
    run = cai.run(PROMPTS[:4], out=tmp_path / "r", engine="ray", workers=2, model="local", rounds=1, max_tokens=8,
                  seed=0, concurrency=2)
    assert run.invocation["done"] == 4 and run.invocation["failed"] == 0
    crit = run.critiques()
    assert len(crit) == 4 and crit["parsed"].all()
    assert set(run.calls()["role"]) == {"generator", "critic", "reviser"}


def test_the_budget_holds_across_ray_workers_and_a_higher_one_finishes_the_run(tmp_path, cluster, monkeypatch):
    from cai.errors import BudgetExhausted

    price = {"input": 1000.0, "output": 2000.0}
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps({"openai:stub*": price}))
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    with StubServer() as srv:
        opts = {**options(srv), "prices": prices}
        full = cai.run(PROMPTS[:16], out=tmp_path / "local", **opts)
        limit = round(full.manifest["estimated_cost_usd"] * 0.4, 4)
        srv.usage.clear()
        with pytest.raises(BudgetExhausted) as e:
            cai.run(PROMPTS[:16], out=tmp_path / "ray", engine="ray", workers=2, max_cost=limit, **opts)
        paid = sum(p * price["input"] + c * price["output"] for p, c in srv.usage) / 1e6
        assert 0 < paid <= limit and e.value.exit_code == 5
        budget = e.value.run.manifest["budget"]
        assert budget["spent_usd"] <= limit and 0 < e.value.run.status()["records"]["done"] < 16
        cai.run(PROMPTS[:16], out=tmp_path / "ray", engine="ray", workers=2, max_cost=limit * 10, **opts)
    assert exports(tmp_path / "ray") == exports(tmp_path / "local")
