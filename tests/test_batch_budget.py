"""The budget (`--max-cost`) of a batch job, through the real openai SDK against the loopback batch server: a
stage submits only the requests whose worst case (at the batch price) fits in what is left, the money the server's
own token counts say was spent never exceeds the budget, the tick that can submit nothing more with nothing in
flight exits 5 with one line, and a tick with a higher budget finishes the job with the exports of an uncapped
job. A request's hold is freed when it ends without an answer, a hold a killed `cai run` left counts as spent, and
a model without a price is refused before anything is submitted."""

from __future__ import annotations

import contextlib
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from batch_servers import BatchServer
from cai import batch
from cai.batch import EXIT_WAITING
from cai.errors import InputError
from helpers import cai, write_prompts
from reliability import KEY, one_line_error

# USD per million tokens, the batch price half the standard one: dear enough that a few requests cost cents
PRICE = {"input": 2000.0, "output": 4000.0, "batch_input": 1000.0, "batch_output": 2000.0}
OPTS = ["--rounds", "1", "--max-tokens", "16", "--max-retries", "2", "--timeout", "60"]
EXPORTS = ("sft.jsonl", "pairs.jsonl", "critiques.jsonl")
RECORDS = 5


@pytest.fixture(params=["openai"])
def job(request: pytest.FixtureRequest, batch_server: BatchServer, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """A job's `cai batch submit` arguments, for the provider `request.param` (openai unless parametrized)."""
    provider = request.param
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps({f"{provider}:stub": PRICE}))
    inp = write_prompts(tmp_path / "prompts.jsonl", [f"Question number {i}: how do tides work?"
                                                     for i in range(RECORDS)])
    url = batch_server.url if provider == "openai" else batch_server.anthropic_url
    args = [inp, "--model", f"{provider}:stub", "--base-url", url, *OPTS, "--prices", prices]
    return {"srv": batch_server, "args": args, "tmp": tmp_path}


def spent_by_server(srv: BatchServer) -> float:
    """USD of the replies the server built, by its own token counts, at the batch price."""
    return sum(p * PRICE["batch_input"] + c * PRICE["batch_output"] for p, c in srv.usage) / 1e6


def holds(run: Path) -> list[float]:
    with contextlib.closing(sqlite3.connect(f"{(run / 'run.sqlite').as_uri()}?mode=ro", uri=True)) as c:
        return [usd for (usd,) in c.execute("SELECT usd FROM budget_holds")]


def exports(run: Path) -> dict[str, bytes]:
    return {name: (run / name).read_bytes() for name in EXPORTS}


def tick(out: Path, *extra: str) -> dict[str, Any]:
    res = cai("batch", "tick", out, "--json", *extra)
    report = json.loads(res.stdout)
    assert res.exit_code == report["exit_code"], res.stderr
    return {**report, "stderr": res.stderr}


def uncapped(job: dict[str, Any]) -> tuple[Path, float]:
    """An uncapped job run to its end: its folder and its cost."""
    srv, out = job["srv"], job["tmp"] / "full"
    assert cai("batch", "submit", *job["args"], "--out", out).exit_code == 0
    assert len(holds(out)) == RECORDS  # kept while prices are known, budget or not
    assert batch.status(out)["budget"] is None  # no budget: none to show
    for _ in range(3):
        srv.finish_all()
        report = tick(out)
    assert report["complete"] and holds(out) == []
    return out, report["manifest"]["estimated_cost_usd"]


def test_a_capped_job_never_spends_past_its_budget_and_a_higher_one_finishes_it(job):
    srv, tmp = job["srv"], job["tmp"]
    full, cost = uncapped(job)
    srv.usage.clear()
    limit = round(cost, 6)  # what the uncapped job spent: too little, for a request's worst case is far above its cost
    out = tmp / "capped"
    assert cai("batch", "submit", *job["args"], "--out", out, "--max-cost", str(limit)).exit_code == 0
    reports = []
    for _ in range(20):  # each tick submits what fits in what the answered requests left
        srv.finish_all()
        reports.append(tick(out))
        assert spent_by_server(srv) <= limit
        if reports[-1]["exit_code"] == 5:
            break
    stop = reports[-1]
    assert stop["exit_code"] == 5 and stop["budget_stopped"] and stop["open_batches"] == 0
    assert all(r["exit_code"] in (0, EXIT_WAITING) for r in reports[:-1])
    line = stop["stderr"].strip().splitlines()[-1]
    assert f"budget reached: ${stop['budget']['spent_usd']:.4f} spent and $0.0000 reserved in flight of " \
           f"${limit:.4f} (--max-cost); {stop['over_budget']} requests wait for a higher budget" in line
    assert line.endswith("(exit 5)") and stop["over_budget"] > 0
    assert stop["budget"]["spent_usd"] == pytest.approx(spent_by_server(srv), abs=1e-9)
    manifest = json.loads((out / "manifest.json").read_text())  # what is done is exported, as `cai run` does
    assert manifest["budget"] == {**stop["budget"], "reserved_usd": 0}
    assert 0 < manifest["records"]["done"] < RECORDS
    assert len((out / "sft.jsonl").read_text().splitlines()) == manifest["records"]["done"]

    batches = len(srv.batches())
    again = tick(out)  # a plain tick keeps the budget: nothing more is sent
    assert again["exit_code"] == 5 and len(srv.batches()) == batches and spent_by_server(srv) <= limit

    higher = tick(out, "--max-cost", str(round(cost * 10, 6)))
    assert higher["exit_code"] == 0 and higher["submitted"] and higher["over_budget"] == 0
    for _ in range(3):
        if higher["complete"]:
            break
        srv.finish_all()
        higher = tick(out)  # later ticks keep the higher budget
    assert higher["complete"] and higher["budget"]["max_cost_usd"] == round(cost * 10, 6)
    assert exports(out) == exports(full)
    assert spent_by_server(srv) == pytest.approx(cost)  # nothing paid twice
    assert holds(out) == []


@pytest.mark.parametrize("job", ["openai", "anthropic"], indirect=True)
def test_a_stage_submits_only_what_fits_and_a_lower_budget_stops_the_job(job):
    srv, tmp = job["srv"], job["tmp"]
    assert cai("batch", "submit", *job["args"], "--out", tmp / "probe").exit_code == 0
    limit = round(2.5 * max(holds(tmp / "probe")), 6)  # two drafts' worst cases fit, a third does not
    out = tmp / "job"
    res = cai("batch", "submit", *job["args"], "--out", out, "--max-cost", str(limit), "--json")
    assert res.exit_code == 0, res.stderr
    first = json.loads(res.stdout)
    assert [b["requests"] for b in first["submitted"]] == [2] and first["over_budget"] == RECORDS - 2
    assert len(srv.batches()[-1].requests) == 2  # what does not fit is not submitted
    assert "3 requests wait for what the batches in flight leave, or a higher budget" in res.stderr
    status = batch.status(out)
    assert len(holds(out)) == 2 and status["budget"]["reserved_usd"] == pytest.approx(sum(holds(out)))
    assert status["budget"]["spent_usd"] == 0
    shown = cai("batch", "status", out)
    assert f"$0.0000 spent and ${sum(holds(out)):.4f} reserved in flight of ${limit:.4f} (--max-cost)" in shown.stderr

    lowered = tick(out, "--max-cost", "0")  # the drafts already out are not recalled
    assert lowered["exit_code"] == EXIT_WAITING and lowered["open_batches"] == 1
    assert batch.status(out)["budget"]["max_cost_usd"] == 0
    srv.finish_all()
    stop = tick(out)
    assert stop["exit_code"] == 5 and stop["stored"] == 2 and not stop["submitted"]
    assert stop["over_budget"] == RECORDS and len(srv.batches()) == 2 and holds(out) == []


def test_a_request_that_ends_without_an_answer_frees_its_hold_and_a_lost_one_counts_as_spent(job):
    srv, out = job["srv"], job["tmp"] / "job"
    assert cai("batch", "submit", *job["args"], "--out", out, "--max-cost", "100").exit_code == 0
    srv.advance(requests=2, finish=False)  # two drafts answered, then the batch expires with three not run
    srv.expire()
    with contextlib.closing(sqlite3.connect(out / "run.sqlite")) as c, c:  # left by a `cai run` killed mid-call
        c.execute("INSERT INTO budget_holds VALUES('killed-call', 0.5, 0)")
    report = tick(out)
    assert report["budget"]["lost_usd"] == 0.5  # counted as spent, for good
    assert report["stored"] == 2 and [b["stages"] for b in report["submitted"]] == [{"draft": 3, "critique 1": 2}]
    status = batch.status(out)
    assert len(holds(out)) == status["requests"]["sent"] == 5  # the expired three held again, with the two critiques
    assert status["budget"]["reserved_usd"] == pytest.approx(sum(holds(out)))
    assert status["budget"]["spent_usd"] == pytest.approx(spent_by_server(srv) + 0.5, abs=1e-9)


def test_a_model_without_a_price_is_refused_before_anything_is_submitted(batch_server, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    inp = write_prompts(tmp_path / "prompts.jsonl", ["How do tides work?"])
    args = [inp, "--model", "openai:stub", "--base-url", batch_server.url, *OPTS]
    res = cai("batch", "submit", *args, "--out", tmp_path / "capped", "--max-cost", "1")
    assert res.exit_code == 2
    assert one_line_error(res.stderr) == ("error: no price for generator model 'openai:stub': --max-cost needs one "
                                          "(give it in a --prices table, see docs/cost.md)")
    assert not (tmp_path / "capped").exists() and batch_server.count() == 0

    out = tmp_path / "job"  # a job without a budget, then a tick that sets one
    assert cai("batch", "submit", *args, "--out", out).exit_code == 0 and holds(out) == []
    batch_server.finish_all()
    res = cai("batch", "tick", out, "--max-cost", "1")
    assert res.exit_code == 2 and "no price for generator model 'openai:stub'" in one_line_error(res.stderr)
    assert len(batch_server.batches()) == 1 and batch.status(out)["requests"] == {"sent": 1}
    with pytest.raises(InputError, match="max_cost"):
        batch.tick(out, max_cost=float("nan"))
