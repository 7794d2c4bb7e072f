"""What a batch job does with each form a failed request takes in the providers' batch results: retried in the
next batch (like a 5xx, within --max-retries), sent again as it was, or its record failed at once. Through the
real SDKs against the loopback batch server, which writes each form (tests/batch_servers.py `fail_requests`).
"""

from __future__ import annotations

import contextlib
import random

import pytest

from cai import batch
from test_batch import LIB, db, keys, plain_run, prompts, ticks_until_complete, url  # noqa: F401 (keys: a fixture)

pytestmark = pytest.mark.usefixtures("keys")  # the API keys in the environment


# Every form a request's failure takes in batch results, and what the job does with the request: "retried" in
# the next batch and counted against --max-retries (like a 5xx), "failed" (its record fails at once) or "resent"
# as it was, not counted. `form` is fail_requests': status, a line or result with that HTTP status; code, an
# OpenAI line with "response": null and that error.code, an Anthropic `errored` result of that error.type (or
# the result type expired / canceled).
# docs/batch.md has the same table.
ERROR_FORMS = [
    ("openai", {"code": "server_error"}, "retried"),
    ("openai", {"code": "rate_limit_exceeded"}, "retried"),
    ("openai", {"code": "request_timeout"}, "retried"),
    ("openai", {"code": "a_code_not_known_yet"}, "retried"),
    ("openai", {"code": "invalid_request"}, "failed"),
    ("openai", {"code": "batch_expired"}, "resent"),
    ("openai", {"code": "batch_cancelled"}, "resent"),
    ("openai", {"status": 500}, "retried"),
    ("openai", {"status": 503}, "retried"),
    ("openai", {"status": 429}, "retried"),
    ("openai", {"status": 408}, "retried"),
    ("openai", {"status": 400}, "failed"),
    ("openai", {"status": 401}, "failed"),
    ("openai", {"status": 403}, "failed"),
    ("openai", {"status": 404}, "failed"),
    ("anthropic", {"code": "api_error"}, "retried"),
    ("anthropic", {"code": "overloaded_error"}, "retried"),
    ("anthropic", {"code": "rate_limit_error"}, "retried"),
    ("anthropic", {"code": "timeout_error"}, "retried"),
    ("anthropic", {"code": "an_error_not_known_yet"}, "retried"),
    ("anthropic", {"code": "invalid_request_error"}, "failed"),
    ("anthropic", {"code": "authentication_error"}, "failed"),
    ("anthropic", {"code": "permission_error"}, "failed"),
    ("anthropic", {"code": "billing_error"}, "failed"),
    ("anthropic", {"code": "not_found_error"}, "failed"),
    ("anthropic", {"code": "request_too_large"}, "failed"),
    ("anthropic", {"code": "expired"}, "resent"),
    ("anthropic", {"code": "canceled"}, "resent"),
]


@pytest.mark.parametrize(("provider", "form", "fate"), ERROR_FORMS,
                         ids=[f"{p}-{next(iter(f.values()))}" for p, f, _ in ERROR_FORMS])
def test_each_error_form_is_retried_resent_or_fails_its_record(batch_server, tmp_path, provider, form, fate):
    srv, out = batch_server, tmp_path / "job"
    srv.fail_requests(lambda cid, body: "-p0-draft-" in cid, times=1, **form)
    batch.submit(prompts(tmp_path, 2), out=out, model=f"{provider}:stub", base_url=url(srv, provider), **LIB)
    ticks_until_complete(srv, out)
    with contextlib.closing(db(out)) as c:
        drafts = c.execute("SELECT attempt, state FROM batch_requests WHERE record='p0' AND stage='draft' "
                           "ORDER BY attempt").fetchall()
        records = dict(c.execute("SELECT id, status FROM records").fetchall())
        errors = c.execute("SELECT record_id, stage FROM errors").fetchall()
    if fate == "failed":
        assert drafts == [(1, "failed")] and errors == [("p0", "draft")]
        assert records == {"p0": "failed", "p1": "done"}
    else:
        first = "failed" if fate == "retried" else ("canceled" if "cancel" in form["code"] else "expired")
        assert drafts == [(1, first), (2, "done")] and errors == []
        assert records == {"p0": "done", "p1": "done"}


@pytest.mark.parametrize(("provider", "code"), [("openai", "server_error"), ("anthropic", "api_error")])
def test_a_30_percent_failure_rate_ends_with_every_record_done(batch_server, tmp_path, provider, code):
    srv, out, rng = batch_server, tmp_path / "job", random.Random(33)
    last = LIB["max_retries"] + 1  # every attempt but the last one allowed fails 30 % of the time
    srv.fail_requests(lambda cid, body: not cid.endswith(f"-{last}") and rng.random() < 0.3, code=code)
    batch.submit(prompts(tmp_path, 20), out=out, model=f"{provider}:stub", base_url=url(srv, provider), **LIB)
    ticks_until_complete(srv, out, limit=20)
    status = batch.status(out)
    assert status["records"]["done"] == 20 and status["records"]["failed"] == 0
    assert status["requests"]["failed"] >= 10  # about 30 % of the 60 first attempts failed, and were retried


@pytest.mark.parametrize(("provider", "code"), [("openai", "server_error"), ("anthropic", "overloaded_error")])
def test_a_retryable_error_form_counts_against_max_retries(batch_server, tmp_path, provider, code):
    srv, out = batch_server, tmp_path / "job"
    srv.fail_requests(lambda cid, body: "-p0-draft-" in cid, code=code)  # always
    batch.submit(prompts(tmp_path, 2), out=out, model=f"{provider}:stub", base_url=url(srv, provider), **LIB)
    ticks_until_complete(srv, out)
    with contextlib.closing(db(out)) as c:
        drafts = c.execute("SELECT attempt, state FROM batch_requests WHERE record='p0' ORDER BY attempt").fetchall()
        errors = c.execute("SELECT record_id, stage, error_class, message FROM errors").fetchall()
    assert drafts == [(1, "failed"), (2, "failed"), (3, "failed")]  # 1 try + --max-retries 2
    assert [e[:3] for e in errors] == [("p0", "draft", "TransientError")] and code in errors[0][3]


def test_a_record_failed_by_a_batch_result_is_retried_by_retry_failed(batch_server, tmp_path):
    srv, out, p = batch_server, tmp_path / "job", prompts(tmp_path, 2)
    srv.fail_requests(lambda cid, body: "-p0-draft-" in cid, code="authentication_error", times=1)
    batch.submit(p, out=out, model="anthropic:stub", base_url=srv.anthropic_url, **LIB)
    srv.finish_all()
    report = batch.tick(out)  # the record fails; the job goes on
    assert report.failed_now == 1 and report.exit_code == 1
    ticks_until_complete(srv, out)
    assert plain_run(srv, "anthropic", p, out, "--retry-failed") == 3  # p0's draft, critique and revision
    with contextlib.closing(db(out)) as c:
        assert dict(c.execute("SELECT id, status FROM records").fetchall()) == {"p0": "done", "p1": "done"}
