"""Scheduled batch jobs (`cai batch`, `cai.batch`) through the real openai and anthropic SDKs against the loopback
batch server (tests/batch_servers.py). Batches move only when a test calls `advance` / `finish_all` / `expire`,
so nothing here waits on time; kills happen while the server holds a reply (a "stall" fault), never after a sleep.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from batch_servers import BatchServer
from cai import batch
from cai.batch import EXIT_WAITING
from cai.batch.openai_batch import Batches as OpenAIBatches
from cai.report.data import role_costs
from helpers import read_jsonl, write_prompts
from reliability import KEY, cai_proc, cai_run, one_line_error

PROVIDERS = ("openai", "anthropic")
OPTS = ["--rounds", "1", "--max-tokens", "16", "--max-retries", "2", "--timeout", "60"]
LIB = {"rounds": 1, "max_tokens": 16, "max_retries": 2, "timeout": 60.0}
CREATE = {"openai": "batches.create", "anthropic": "messages.batches.create"}
RESULTS = {"openai": "files.content", "anthropic": "messages.batches.results"}
EXPORTS = ("sft.jsonl", "pairs.jsonl", "critiques.jsonl")


@pytest.fixture
def keys(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    return {**os.environ, "PYTHONUNBUFFERED": "1"}


def url(srv: BatchServer, provider: str) -> str:
    return srv.url if provider == "openai" else srv.anthropic_url


def model_args(srv: BatchServer, provider: str) -> list[str]:
    return ["--model", f"{provider}:stub", "--base-url", url(srv, provider)]


def prompts(tmp: Path, n: int = 5, name: str = "prompts.jsonl") -> Path:
    return write_prompts(tmp / name, [f"Question number {i}: how do tides work?" for i in range(n)])


def submitted(srv: BatchServer) -> int:
    """Requests sent inside batches, all batches together."""
    return sum(srv.submitted.values())


def chat_calls(srv: BatchServer) -> int:
    """Synchronous model calls the server answered (a plain `cai run`)."""
    by_path = srv.by_path()
    return by_path.get("/v1/chat/completions", 0) + by_path.get("/v1/messages", 0)


def ticks_until_complete(srv: BatchServer, out: Path, limit: int = 10) -> int:
    """Finish every open batch and tick, until a tick reports the job complete; returns the ticks needed."""
    for n in range(1, limit + 1):
        srv.finish_all()
        report = batch.tick(out)
        if report.complete:
            return n
    raise AssertionError(f"not complete after {limit} ticks")


def plain_run(srv: BatchServer, provider: str, input_path: Path, out: Path, *extra: str) -> int:
    """A plain `cai run` of the same input on the same server; returns the model calls it made."""
    before = chat_calls(srv)
    r = cai_run("run", input_path, "--out", out, *model_args(srv, provider), *OPTS, "--quiet", *extra)
    assert r.returncode == 0, r.stderr
    return chat_calls(srv) - before


def db(run: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"{(run / 'run.sqlite').as_uri()}?mode=ro", uri=True)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_three_stage_job_equals_a_plain_run_at_half_the_price(batch_server, keys, tmp_path, provider):
    srv, p = batch_server, prompts(tmp_path)
    table = tmp_path / "prices.json"
    table.write_text(json.dumps({f"{provider}:stub": {"input": 2.0, "output": 8.0, "batch_input": 1.0,
                                                      "batch_output": 4.0}}))
    out = tmp_path / "job"
    r = cai_run("batch", "submit", p, "--out", out, *model_args(srv, provider), *OPTS, "--prices", table, env=keys)
    assert r.returncode == 0, r.stderr
    (first,) = srv.batches()
    assert first.id in r.stderr and len(first.requests) == 5  # one draft per record, returned at once

    waiting = cai_run("batch", "tick", out, env=keys)  # the provider has not answered yet
    assert waiting.returncode == EXIT_WAITING, waiting.stderr
    assert "waiting on 1 batch" in waiting.stderr

    stages = []
    for _ in range(3):
        srv.finish_all()
        t = cai_run("batch", "tick", out, "--json", env=keys)
        assert t.returncode == 0, t.stderr
        report = json.loads(t.stdout)
        stages.append([b["stages"] for b in report["submitted"]])
    assert stages == [[{"critique 1": 5}], [{"revise 1": 5}], []]  # three stages, one batch each
    assert report["complete"] and report["manifest"]["records"]["done"] == 5
    if provider == "openai":
        assert srv.files == {}  # the input, output and error files are deleted once the answers are stored
    invocations = batch.status(out)["invocations"]
    again = cai_run("batch", "tick", out, env=keys)
    assert again.returncode == 0 and "nothing to do" in again.stderr
    assert batch.status(out)["invocations"] == invocations  # a finished job is not written to again

    calls = plain_run(srv, provider, p, tmp_path / "plain", "--prices", str(table))
    assert submitted(srv) == calls == 15  # nothing paid twice: exactly the requests of a plain run
    for name in EXPORTS:  # the same answers, so the same data
        assert (out / name).read_bytes() == (tmp_path / "plain" / name).read_bytes(), name
    job, plain = (json.loads((d / "manifest.json").read_text()) for d in (out, tmp_path / "plain"))
    assert job["tokens"] == plain["tokens"]
    assert job["estimated_cost_usd"] == pytest.approx(plain["estimated_cost_usd"] / 2)
    assert report["estimated_cost_usd"] == job["estimated_cost_usd"]
    assert sum(role_costs(job, job["tokens"]).values()) == pytest.approx(job["estimated_cost_usd"])  # the report
    with contextlib.closing(db(out)) as c:
        assert c.execute("SELECT COUNT(*) FROM calls WHERE json_extract(response, '$.batch')").fetchone()[0] == 15
    status = batch.status(out)
    assert status["records"] == {"input": 5, "done": 5, "failed": 0, "waiting": 0}
    assert status["open_batches"] == 0 and status["requests"] == {"done": 15}
    assert status["estimated_cost_usd"] == job["estimated_cost_usd"]


def _stalled_tick(srv: BatchServer, out: Path, keys: dict[str, str], route: str, reached: Any) -> None:
    """Start a tick whose `route` call the server acts on but never answers; kill -9 it once `reached()`."""
    srv.fault_on(route, "stall")
    proc = cai_proc("batch", "tick", out, env=keys)
    try:
        srv.wait_for_requests(10**9, until=lambda: reached() or proc.poll() is not None)
        assert proc.poll() is None, proc.communicate()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL


@pytest.mark.parametrize("provider", PROVIDERS)
def test_kill_9_after_submit_and_before_storing_results_loses_and_repeats_nothing(batch_server, keys, tmp_path,
                                                                                provider):
    srv, p, out = batch_server, prompts(tmp_path), tmp_path / "job"
    srv.hang_seconds = 600  # a stalled reply never comes while the test runs
    assert batch.submit(p, out=out, model=f"{provider}:stub", base_url=url(srv, provider), **LIB).exit_code == 0
    srv.finish_all()

    # killed inside a tick, after the provider created the critique batch and before the tick stored its id
    _stalled_tick(srv, out, keys, CREATE[provider], lambda: srv.batches_created == 2)
    with contextlib.closing(db(out)) as c:
        assert c.execute("SELECT state, batch_id FROM batch_jobs ORDER BY n").fetchall()[-1] == ("creating", None)
    # killed between ticks' work: after the provider sent the results, before they were stored
    srv.finish_all()
    calls_before = srv.calls[RESULTS[provider]]
    _stalled_tick(srv, out, keys, RESULTS[provider], lambda: srv.calls[RESULTS[provider]] > calls_before)

    ticks = ticks_until_complete(srv, out)
    assert srv.batches_created == 3 and ticks <= 3  # the lost create was found again, not sent twice
    assert submitted(srv) == plain_run(srv, provider, p, tmp_path / "plain") == 15
    for name in EXPORTS:
        assert (out / name).read_bytes() == (tmp_path / "plain" / name).read_bytes(), name


def test_two_ticks_racing_one_waits_for_nothing(batch_server, keys, tmp_path):
    srv, p, out = batch_server, prompts(tmp_path, 3), tmp_path / "job"
    batch.submit(p, out=out, model="openai:stub", base_url=srv.url, **LIB)
    srv.finish_all()
    srv.pause()  # the first tick takes the lock, then waits on the server
    first = cai_proc("batch", "tick", out, env=keys)
    try:
        seen = len(srv.requests)
        srv.wait_for_requests(seen + 1, until=lambda: first.poll() is not None)
        second = cai_run("batch", "tick", out, env=keys)
        assert second.returncode == 3, second.stderr
        assert "in use by another cai process" in one_line_error(second.stderr)
        plain = cai_run("run", p, "--out", out, *model_args(srv, "openai"), *OPTS, "--quiet", env=keys)
        assert plain.returncode == 3, plain.stderr
    finally:
        srv.resume()
    _, err = first.communicate(timeout=600)
    assert first.returncode == 0, err
    assert ticks_until_complete(srv, out) == 2 and submitted(srv) == 9


def test_a_grown_prompts_file_adds_only_its_new_rows(batch_server, keys, tmp_path):
    srv, out = batch_server, tmp_path / "job"
    p = prompts(tmp_path, 3)
    first = batch.submit(p, out=out, model="anthropic:stub", base_url=srv.anthropic_url, **LIB)
    assert [b["stages"] for b in first.submitted] == [{"draft": 3}]
    with p.open("a") as f:  # two rows appended while the first drafts are still with the provider
        for i in (3, 4):
            f.write(json.dumps({"id": f"p{i}", "prompt": f"Question number {i}: how do tides work?"}) + "\n")
    second = batch.submit(p, out=out, model="anthropic:stub", base_url=srv.anthropic_url, **LIB)
    assert [b["stages"] for b in second.submitted] == [{"draft": 2}]  # the three in flight are not sent again
    with contextlib.closing(db(out)) as c:
        info = json.loads(c.execute("SELECT value FROM meta WHERE key='input'").fetchone()[0])
    assert info["records_added"] == 2 and info["records"] == 5
    ticks_until_complete(srv, out)
    assert len(read_jsonl(out / "sft.jsonl")) == 5
    assert submitted(srv) == plain_run(srv, "anthropic", p, tmp_path / "plain") == 15


def test_a_changed_old_row_is_refused_naming_the_line(batch_server, keys, tmp_path):
    srv, out = batch_server, tmp_path / "job"
    p = prompts(tmp_path, 3)
    batch.submit(p, out=out, model="openai:stub", base_url=srv.url, **LIB)
    lines = p.read_text().splitlines(keepends=True)
    lines[1] = json.dumps({"id": "p1", "prompt": "Something else entirely"}) + "\n"
    p.write_text("".join(lines))
    r = cai_run("batch", "submit", p, "--out", out, *model_args(srv, "openai"), *OPTS, env=keys)
    assert r.returncode == 2
    assert one_line_error(r.stderr).startswith(f"error: {p}:2: this row changed")
    assert srv.batches_created == 1
    srv.finish_all()  # ticks go on with the rows submitted before the change
    assert ticks_until_complete(srv, out) == 3


def test_failed_requests_are_retried_up_to_max_retries_then_stored_as_errors(batch_server, keys, tmp_path):
    srv, out = batch_server, tmp_path / "job"
    p = prompts(tmp_path, 3)
    srv.fail_requests(lambda cid, body: "-p1-draft-" in cid, status=500)  # always fails: 1 try + 2 retries
    srv.fail_requests(lambda cid, body: "-p2-critique-" in cid, status=503, times=1)  # fails once, then works
    batch.submit(p, out=out, model="openai:stub", base_url=srv.url, **LIB)
    codes = []
    for _ in range(10):
        srv.finish_all()
        report = batch.tick(out)
        codes.append(report.exit_code)
        if report.complete:
            break
    assert report.complete and 1 in codes  # the pass that gave up on p1 exits 1
    status = batch.status(out)
    assert status["records"]["done"] == 2 and status["records"]["failed"] == 1
    with contextlib.closing(db(out)) as c:
        drafts = c.execute("SELECT attempt, state FROM batch_requests WHERE record='p1' ORDER BY attempt").fetchall()
        errors = c.execute("SELECT record_id, stage, error_class FROM errors").fetchall()
    assert drafts == [(1, "failed"), (2, "failed"), (3, "failed")]
    assert errors == [("p1", "draft", "TransientError")]


def test_a_rejected_request_fails_its_record_at_once(batch_server, keys, tmp_path):
    srv, out = batch_server, tmp_path / "job"
    srv.fail_requests(lambda cid, body: "-p0-draft-" in cid, status=400, message="prompt is too long")
    batch.submit(prompts(tmp_path, 2), out=out, model="anthropic:stub", base_url=srv.anthropic_url, **LIB)
    srv.finish_all()
    report = batch.tick(out)
    assert report.failed_now == 1 and report.exit_code == 1
    ticks_until_complete(srv, out)
    with contextlib.closing(db(out)) as c:
        assert c.execute("SELECT COUNT(*) FROM batch_requests WHERE record='p0'").fetchone()[0] == 1
        (message,) = c.execute("SELECT message FROM errors WHERE record_id='p0'").fetchone()
    assert "prompt is too long" in message


@pytest.mark.parametrize("provider", PROVIDERS)
def test_an_expired_batch_keeps_its_answers_and_sends_the_rest_again(batch_server, keys, tmp_path, provider):
    srv, out = batch_server, tmp_path / "job"
    batch.submit(prompts(tmp_path, 5), out=out, model=f"{provider}:stub", base_url=url(srv, provider), **LIB)
    srv.advance(requests=0)  # started (OpenAI validates first)
    srv.advance(requests=2, finish=False)
    srv.expire()
    report = batch.tick(out)
    assert report.stored == 2
    assert [b["stages"] for b in report.submitted] == [{"critique 1": 2, "draft": 3}]  # one batch per model
    ticks_until_complete(srv, out)
    with contextlib.closing(db(out)) as c:
        resent = c.execute("SELECT COUNT(*) FROM batch_requests WHERE state='expired'").fetchone()[0]
        failed = c.execute("SELECT COUNT(*) FROM batch_requests WHERE state='failed'").fetchone()[0]
    assert resent == 3 and failed == 0 and submitted(srv) == 15 + 3


def test_openai_structured_mode_falls_back_and_is_remembered(batch_server, keys, tmp_path):
    srv, out = batch_server, tmp_path / "job"
    refused = "response_format of type json_schema is not supported by this model"
    srv.fail_requests(lambda cid, body: (body.get("response_format") or {}).get("type") == "json_schema",
                      status=400, message=refused)
    batch.submit(prompts(tmp_path, 2), out=out, model="openai:stub", base_url=srv.url, **{**LIB, "rounds": 2})
    ticks_until_complete(srv, out)
    with contextlib.closing(db(out)) as c:
        modes = json.loads(c.execute("SELECT value FROM meta WHERE key='batch_structured_modes'").fetchone()[0])
        rows = c.execute("SELECT stage, round, mode, state FROM batch_requests WHERE stage='critique' "
                         "ORDER BY round, attempt").fetchall()
        done = c.execute("SELECT COUNT(*) FROM records WHERE status='done'").fetchone()[0]
    assert modes == {"openai:stub": "json_object"} and done == 2
    assert [r for r in rows if r[1] == 1] == [("critique", 1, "json_schema", "refused_mode")] * 2 + [
        ("critique", 1, "json_object", "done")] * 2
    assert {r for r in rows if r[1] == 2} == {("critique", 2, "json_object", "done")}  # round 2 asks right away


def test_cancel_keeps_what_finished_and_submit_resumes(batch_server, keys, tmp_path):
    srv, out, p = batch_server, tmp_path / "job", prompts(tmp_path, 4)
    batch.submit(p, out=out, model="anthropic:stub", base_url=srv.anthropic_url, **LIB)
    srv.advance(requests=1, finish=False)  # one draft answered, three still processing
    r = cai_run("batch", "cancel", out, env=keys)
    assert r.returncode == 0 and srv.batches()[0].status == "canceling", r.stderr
    srv.finish_all()  # the cancellation completes
    report = batch.tick(out)
    assert report.paused and report.stored == 1 and not report.submitted and report.exit_code == 0
    assert batch.status(out)["paused"]
    resumed = batch.submit(p, out=out, model="anthropic:stub", base_url=srv.anthropic_url, **LIB)
    assert [b["stages"] for b in resumed.submitted] == [{"critique 1": 1, "draft": 3}]
    ticks_until_complete(srv, out)
    assert batch.status(out)["records"]["done"] == 4


def test_status_shows_stages_batches_and_cost(batch_server, keys, tmp_path):
    srv, out = batch_server, tmp_path / "job"
    batch.submit(prompts(tmp_path, 3), out=out, model="openai:stub", base_url=srv.url, **LIB)
    r = cai_run("batch", "status", out, env=keys)
    assert r.returncode == 0, r.stderr
    (b,) = srv.batches()
    assert b.id in r.stderr and "in flight: 3 draft" in r.stderr and "0 done" in r.stderr
    info = json.loads(cai_run("batch", "status", out, "--json", env=keys).stdout)
    assert info["stages"] == [{"stage": "draft", "round": 0, "batch": "open", "requests": 3}]
    assert info["batches"][0]["batch_id"] == b.id and info["batches"][0]["age_s"] >= 0


def test_tick_and_status_print_the_same_cost_at_every_step(batch_server, keys, tmp_path):
    """A finished job's tick said "estimated cost so far unknown" while `cai batch status` gave the figure."""
    srv, out = batch_server, tmp_path / "job"
    table = tmp_path / "prices.json"
    table.write_text(json.dumps({"openai:stub": {"input": 2.0, "output": 8.0, "batch_input": 1.0,
                                                 "batch_output": 4.0}}))
    batch.submit(prompts(tmp_path, 2), out=out, model="openai:stub", base_url=srv.url, prices=str(table), **LIB)
    costs = []
    for finish in (False, True, True, True, False):  # waiting, three stages stored, then a finished job's tick
        if finish:
            srv.finish_all()
        tick = cai_run("batch", "tick", out, env=keys)
        status = cai_run("batch", "status", out, env=keys)
        assert tick.returncode in (0, EXIT_WAITING) and status.returncode == 0, tick.stderr + status.stderr
        said = [line.split("estimated cost so far ")[1][:7] for line in (tick.stderr, status.stderr)]
        assert said[0] == said[1] and said[0].startswith("$"), (tick.stderr, status.stderr)
        costs.append(said[0])
    assert "nothing to do" in tick.stderr and costs[0] == "$0.0000" and costs[-1] == costs[-2] != costs[0]
    assert batch.tick(out).estimated_cost_usd == batch.status(out)["estimated_cost_usd"] > 0


def test_a_local_model_or_a_plain_run_folder_is_refused_in_one_line(keys, tmp_path):
    p = prompts(tmp_path, 2)
    r = cai_run("batch", "submit", p, "--out", tmp_path / "job", env=keys)
    assert r.returncode == 2 and "has no batch API" in one_line_error(r.stderr)
    assert not (tmp_path / "job").exists()
    t = cai_run("batch", "tick", tmp_path / "nowhere", env=keys)
    assert t.returncode == 2 and "not a cai run" in one_line_error(t.stderr)


def test_a_plain_run_waits_for_the_batches_then_uses_their_answers(batch_server, keys, tmp_path):
    srv, out, p = batch_server, tmp_path / "job", prompts(tmp_path, 3)
    batch.submit(p, out=out, model="openai:stub", base_url=srv.url, **LIB)
    args = ("run", p, "--out", out, *model_args(srv, "openai"), *OPTS, "--quiet", "--json")
    refused = cai_run(*args, env=keys)
    assert refused.returncode == 2 and "3 calls of this run are with a provider batch" in one_line_error(
        refused.stderr)
    srv.finish_all()
    batch.tick(out)  # drafts stored, critiques submitted
    assert cai_run("batch", "cancel", out, env=keys).returncode == 0
    srv.finish_all()
    assert batch.tick(out).paused  # the cancelled critiques are collected: nothing is with the provider now
    before = chat_calls(srv)
    done = cai_run(*args, env=keys)
    assert done.returncode == 0, done.stderr
    manifest = json.loads(done.stdout)
    assert chat_calls(srv) - before == 6 and manifest["records"]["done"] == 3  # critiques and revisions only
    assert manifest["tokens_batch"]["generator"]["calls"] == 3


def test_a_stage_larger_than_the_provider_limit_is_split_into_batches(batch_server, keys, tmp_path, monkeypatch):
    srv, out = batch_server, tmp_path / "job"
    monkeypatch.setattr(OpenAIBatches, "max_requests", 2)
    report = batch.submit(prompts(tmp_path, 5), out=out, model="openai:stub", base_url=srv.url, **LIB)
    assert [b["requests"] for b in report.submitted] == [2, 2, 1]
    assert [len(b.requests) for b in srv.batches()] == [2, 2, 1]
    assert ticks_until_complete(srv, out) == 3 and submitted(srv) == 15 and srv.batches_created == 9


def test_a_job_with_rule_based_rewards_makes_the_calls_of_a_plain_run(batch_server, keys, tmp_path):
    srv, out, p = batch_server, tmp_path / "job", prompts(tmp_path, 1)
    r = cai_run("batch", "submit", p, "--out", out, *model_args(srv, "openai"), *OPTS, "--rbr", env=keys)
    assert r.returncode == 0, r.stderr
    ticks = ticks_until_complete(srv, out, limit=20)
    assert ticks > 3  # grading adds stages: response type, propositions, then the votes
    calls = plain_run(srv, "openai", p, tmp_path / "plain", "--rbr")
    assert submitted(srv) == calls
    for name in EXPORTS:
        assert (out / name).read_bytes() == (tmp_path / "plain" / name).read_bytes(), name


def test_roles_on_two_providers_tick_with_the_urls_they_were_submitted_with(batch_server, keys, tmp_path,
                                                                             monkeypatch):
    srv, out = batch_server, tmp_path / "job"
    monkeypatch.setenv("OPENAI_BASE_URL", srv.url)
    monkeypatch.setenv("ANTHROPIC_BASE_URL", srv.anthropic_url)
    first = batch.submit(prompts(tmp_path, 2), out=out, model="openai:stub", critic="anthropic:stub", **LIB)
    assert [(b["provider"], b["stages"]) for b in first.submitted] == [("openai", {"draft": 2})]
    monkeypatch.delenv("OPENAI_BASE_URL")  # cron's environment: only the keys
    monkeypatch.delenv("ANTHROPIC_BASE_URL")
    srv.finish_all()
    second = batch.tick(out)
    assert [(b["provider"], b["stages"]) for b in second.submitted] == [("anthropic", {"critique 1": 2})]
    assert ticks_until_complete(srv, out) == 2
    assert [b.api for b in srv.batches()] == ["openai", "anthropic", "openai"]


def test_a_job_with_ai_preference_labels_makes_the_calls_of_a_plain_run(batch_server, keys, tmp_path):
    srv, out, p = batch_server, tmp_path / "job", prompts(tmp_path, 2)

    def reply(kind: str, body: dict[str, Any]) -> str | None:  # samples differ by seed; the judge picks (A)
        if body.get("response_format"):
            return None
        if "Response (A)" in body["messages"][-1]["content"]:
            return "A"
        return f"Tides answer {body.get('seed')}."

    srv.reply_fn = reply
    r = cai_run("batch", "submit", p, "--out", out, *model_args(srv, "openai"), *OPTS, "--candidates", "2",
                "--votes", "1", env=keys)
    assert r.returncode == 0, r.stderr
    ticks_until_complete(srv, out, limit=20)
    calls = plain_run(srv, "openai", p, tmp_path / "plain", "--candidates", "2", "--votes", "1")
    assert submitted(srv) == calls
    for name in (*EXPORTS, "labels.jsonl"):
        assert (out / name).read_bytes() == (tmp_path / "plain" / name).read_bytes(), name
    assert len(read_jsonl(out / "labels.jsonl")) == 2  # one comparison per record, judged through batches
