"""The budget (`--max-cost`) with the real OpenAI SDK against the loopback stub: the money the stub's own token
counts say was spent never exceeds the budget at any concurrency, the run stops with exit 5 and exports what is
done, a resume with a higher budget gives the uncapped run's exports byte for byte, a kill -9 with calls in flight
still never lets the run cross its budget, and a model without a price is refused before anything starts."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

import cai
from cai.errors import BudgetExhausted
from helpers import cai as cli
from helpers import write_prompts
from reliability import cai_proc, cai_run, one_line_error, stub_args
from servers import StubServer

# USD per million tokens: dear enough that a few records cost dollars
PRICE = {"input": 1000.0, "output": 2000.0}
PROMPTS = [f"Tell me one fact about the number {i}." for i in range(16)]
EXPORTS = ("sft.jsonl", "pairs.jsonl", "critiques.jsonl")


def priced(usage: list[tuple[int, int]]) -> float:
    """USD of the replies the stub built, by its own token counts."""
    return sum(p * PRICE["input"] + c * PRICE["output"] for p, c in usage) / 1e6


@pytest.fixture()
def setup(tmp_path: Path, stub_server: StubServer, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps({"openai:stub*": PRICE}))
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    return write_prompts(tmp_path / "in.jsonl", PROMPTS), prices


def exports(run: Path) -> dict[str, bytes]:
    return {name: (run / name).read_bytes() for name in EXPORTS}


@pytest.mark.parametrize("concurrency", [1, 8, 64])
def test_the_budget_is_never_crossed_and_a_higher_one_finishes_the_run(setup, tmp_path, stub_server, concurrency):
    inp, prices = setup
    args = [*stub_args(stub_server), "--prices", prices, "--concurrency", str(concurrency)]
    full = cli("run", inp, "--out", tmp_path / "full", *args)
    assert full.exit_code == 0, full.stderr
    uncapped = json.loads((tmp_path / "full" / "manifest.json").read_text())["estimated_cost_usd"]
    limit = round(uncapped * 0.4, 4)
    stub_server.usage.clear()
    capped = tmp_path / "capped"
    res = cli("run", inp, "--out", capped, *args, "--max-cost", str(limit))
    assert res.exit_code == 5, res.stderr
    line = one_line_error(res.stderr.split("Continue with")[0])
    assert line.startswith("error: budget reached: $") and f"of ${limit:.4f} (--max-cost)" in line
    assert "--max-cost" in res.stderr.split("Continue with a higher budget:")[1]
    spent_by_stub = priced(stub_server.usage)
    assert 0 < spent_by_stub <= limit
    manifest = json.loads((capped / "manifest.json").read_text())
    assert manifest["budget"]["spent_usd"] == pytest.approx(spent_by_stub, abs=1e-6)
    assert manifest["budget"]["max_cost_usd"] == limit and manifest["budget"]["reserved_usd"] == 0
    done = manifest["records"]["done"]
    assert 0 < done < len(PROMPTS) and len((capped / "sft.jsonl").read_text().splitlines()) <= done
    again = cli("run", inp, "--out", capped, *args)  # a plain re-run keeps the budget
    assert again.exit_code == 5 and priced(stub_server.usage) <= limit
    finished = cli("run", inp, "--out", capped, *args, "--max-cost", str(uncapped * 10))
    assert finished.exit_code == 0, finished.stderr
    assert exports(capped) == exports(tmp_path / "full")


def test_a_kill_9_with_calls_in_flight_never_lets_the_run_cross_its_budget(setup, tmp_path, stub_server):
    inp, prices = setup
    args = [*stub_args(stub_server), "--prices", prices, "--concurrency", "8"]
    limit = 20.0  # room for more than the first calls
    stub_server.hold_after(12)  # the next calls are sent (their holds written) and never answered
    proc = cai_proc("run", inp, "--out", tmp_path / "r", *args, "--max-cost", str(limit))
    try:
        stub_server.wait_for_requests(14, until=lambda: proc.poll() is not None)
        assert proc.poll() is None, proc.communicate()[1]
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=600)
        stub_server.resume()
    answered = priced(stub_server.usage)
    res = cai_run("run", inp, "--out", tmp_path / "r", *args)
    assert res.returncode in (0, 5), res.stderr
    budget = json.loads((tmp_path / "r" / "manifest.json").read_text())["budget"]
    assert budget["lost_usd"] > 0  # the calls the kill cut off count, at their worst case
    assert budget["spent_usd"] <= limit
    assert priced(stub_server.usage) <= limit + 1e-9 and priced(stub_server.usage) >= answered


def test_a_model_without_a_price_is_refused_before_anything_starts(setup, tmp_path, stub_server):
    inp, _ = setup
    res = cli("run", inp, "--out", tmp_path / "r", *stub_args(stub_server), "--max-cost", "1")
    assert res.exit_code == 2
    assert one_line_error(res.stderr) == ("error: no price for generator model 'openai:stub': --max-cost needs one "
                                          "(give it in a --prices table, see docs/cost.md)")
    assert not (tmp_path / "r").exists() and stub_server.count() == 0


def test_the_library_raises_with_the_run_as_far_as_it_got(setup, tmp_path, stub_server):
    inp, prices = setup
    with pytest.raises(BudgetExhausted) as e:
        cai.run(inp, out=tmp_path / "r", model="openai:stub", base_url=stub_server.url, max_tokens=16, rounds=1,
                prices=prices, max_cost=0.05)
    assert e.value.exit_code == 5 and e.value.spent <= 0.05 and e.value.left > 0
    run = e.value.run  # type: ignore[attr-defined]
    assert run.manifest["budget"]["spent_usd"] == pytest.approx(e.value.spent)
    assert run.status()["records"]["done"] == len(PROMPTS) - e.value.left - run.status()["records"]["failed"]


def test_rbr_grade_and_label_stop_at_the_budget_and_go_on_with_a_higher_one(setup, tmp_path, stub_server):
    from test_rbr_cli import write_rows

    _, prices = setup
    rows = write_rows(tmp_path / "rows.jsonl", 8)
    grade = ["rbr", "grade", rows, "--grader", "openai:stub", "--base-url", stub_server.url, "--quiet",
             "--out", tmp_path / "g", "--prices", prices, "--concurrency", "4"]
    stub_server.usage.clear()
    res = cli(*grade, "--max-cost", "10")
    assert res.exit_code == 5 and one_line_error(res.stderr).startswith("error: budget reached: $")
    assert 0 < priced(stub_server.usage) <= 10
    sent = stub_server.count()
    done = cli(*grade, "--max-cost", "1000")
    assert done.exit_code == 0, done.stderr
    again = stub_server.count() - sent
    assert cli(*grade).exit_code == 0 and stub_server.count() - sent == again  # every call was stored once

    cands = tmp_path / "cands.jsonl"
    cands.write_text("".join(json.dumps({"id": f"c{i}", "prompt": f"Name a colour ({i}).",
                                         "responses": ["Red.", "Blue, the colour of the sky.", "Green."]}) + "\n"
                             for i in range(6)))
    stub_server.usage.clear()
    label = ["label", cands, "--judge", "openai:stub", "--base-url", stub_server.url, "--out", tmp_path / "l",
             "--concurrency", "4"]
    unpriced = cli(*label, "--max-cost", "1")
    assert unpriced.exit_code == 2 and "no price for judge model 'openai:stub'" in unpriced.stderr
    assert not (tmp_path / "l").exists()


def test_the_budget_shows_in_status_the_report_and_the_card(setup, tmp_path, stub_server):
    from cai.report import render_report

    inp, prices = setup
    out = tmp_path / "r"
    res = cli("run", inp, "--out", out, *stub_args(stub_server), "--prices", prices, "--max-cost", "5")
    assert res.exit_code == 5
    spent = json.loads((out / "manifest.json").read_text())["budget"]["spent_usd"]
    text = f"${spent:.4f} spent of $5.0000 (--max-cost)"
    assert text in cli("status", out).stderr
    assert text in render_report(cai.open_run(out))
    assert cli("export", out, "--hf", tmp_path / "hf").exit_code == 0
    assert text in (tmp_path / "hf" / "README.md").read_text()
