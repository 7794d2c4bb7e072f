"""The loopback batch server (tests/batch_servers.py), exercised through the real openai and anthropic SDKs.

Nothing here waits on time: batches move only when the test calls `advance` / `finish_all` / `expire`."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import anthropic
import openai
import pytest

from batch_servers import ROUTE_NAMES, BatchServer
from test_servers import VERDICT_SCHEMA  # the same schema the synchronous stub tests use

RF = {"type": "json_schema", "json_schema": {"name": "verdict", "schema": VERDICT_SCHEMA, "strict": True}}


@pytest.fixture
def srv(batch_server):  # conftest's fixture, under a short name
    return batch_server


# Client timeouts are generous (a loopback answer on a loaded machine must never miss one); no retries, so
# every call the test makes is one request the server sees.
def oai(s: BatchServer, retries: int = 0) -> openai.OpenAI:
    return openai.OpenAI(base_url=s.url, api_key="test-key", max_retries=retries, timeout=60)


def ant(s: BatchServer, retries: int = 0) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=s.anthropic_url, api_key="test-key", max_retries=retries, timeout=60)


def chat_bodies(n: int = 3) -> list[dict[str, Any]]:
    """Chat completion bodies of several kinds: plain, cut by max_tokens, json_schema."""
    out = []
    for i in range(n):
        body: dict[str, Any] = {"model": "stub-model",
                                "messages": [{"role": "system", "content": "Be brief."},
                                             {"role": "user", "content": f"Question {i}?"}]}
        if i % 3 == 1:
            body["max_tokens"] = 4
        elif i % 3 == 2:
            body["response_format"] = RF
        out.append(body)
    return out


def input_file(bodies: list[dict[str, Any]], prefix: str = "r") -> bytes:
    return "".join(json.dumps({"custom_id": f"{prefix}{i}", "method": "POST", "url": "/v1/chat/completions",
                               "body": b}) + "\n" for i, b in enumerate(bodies)).encode()


def submit(client: openai.OpenAI, bodies: list[dict[str, Any]], metadata: dict[str, str] | None = None):
    f = client.files.create(file=("requests.jsonl", input_file(bodies)), purpose="batch")
    kw = {"metadata": metadata} if metadata is not None else {}
    return client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h",
                                 **kw)


def jsonl(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def strip_ids(value: Any) -> Any:
    """`value` without the per-call fields (ids, `created`), so two answers to one request compare equal."""
    if isinstance(value, dict):
        return {k: strip_ids(v) for k, v in value.items() if k not in ("id", "created")}
    if isinstance(value, list):
        return [strip_ids(v) for v in value]
    return value


def sync_chat(client: openai.OpenAI, body: dict[str, Any]) -> dict[str, Any]:
    return client.chat.completions.with_raw_response.create(**body).http_response.json()


def message_params(i: int) -> dict[str, Any]:
    """Messages params of several kinds: plain with a system prompt, cut by max_tokens, forced tool use."""
    p: dict[str, Any] = {"model": "stub-model", "max_tokens": 64, "system": "Be brief.",
                         "messages": [{"role": "user", "content": f"Question {i}?"}]}
    if i % 3 == 1:
        p["max_tokens"] = 3
    elif i % 3 == 2:
        p["tools"] = [{"name": "verdict", "description": "The verdict.", "input_schema": VERDICT_SCHEMA}]
        p["tool_choice"] = {"type": "tool", "name": "verdict"}
    return p


def ant_requests(n: int, prefix: str = "q") -> list[dict[str, Any]]:
    return [{"custom_id": f"{prefix}{i}", "params": message_params(i)} for i in range(n)]


def results_by_id(client: anthropic.Anthropic, batch_id: str) -> dict[str, Any]:
    return {r.custom_id: r.result for r in client.messages.batches.results(batch_id)}


# --- OpenAI Files + Batches ------------------------------------------------------------------------


def test_openai_batch_lifecycle_answers_like_sync(srv):
    client = oai(srv)
    bodies = chat_bodies(6)
    data = input_file(bodies)
    f = client.files.create(file=("requests.jsonl", data), purpose="batch")
    assert f.purpose == "batch" and f.bytes == len(data) and f.filename == "requests.jsonl"
    assert client.files.retrieve(f.id).id == f.id
    assert client.files.content(f.id).content == data
    assert [x.id for x in client.files.list(purpose="batch")] == [f.id]

    b = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h",
                              metadata={"job": "run-1", "part": "0"})
    assert b.status == "validating" and b.metadata == {"job": "run-1", "part": "0"} and b.input_file_id == f.id
    assert b.request_counts.total == 6 and b.expires_at == b.created_at + 24 * 3600
    assert srv.batches_created == 1 and srv.submitted[b.id] == 6 and srv.files_uploaded == 1

    # nothing moves by itself
    assert client.batches.retrieve(b.id).status == "validating"
    assert srv.advance(b.id, requests=0) == 0
    r = client.batches.retrieve(b.id)
    assert r.status == "in_progress" and r.in_progress_at and r.request_counts.completed == 0
    assert client.batches.retrieve(b.id).status == "in_progress"
    assert srv.advance(b.id, requests=2) == 2
    r = client.batches.retrieve(b.id)
    assert r.status == "in_progress" and (r.request_counts.completed, r.request_counts.failed) == (2, 0)
    assert r.output_file_id is None
    assert srv.advance(b.id, finish=False) == 4
    r = client.batches.retrieve(b.id)
    assert r.status == "finalizing" and r.output_file_id is None and r.request_counts.completed == 6
    assert srv.advance(b.id) == 0
    r = client.batches.retrieve(b.id)
    assert r.status == "completed" and r.completed_at and r.error_file_id is None
    assert r.model == "stub-model"

    out_file = client.files.retrieve(r.output_file_id)
    assert out_file.purpose == "batch_output"
    lines = jsonl(client.files.content(r.output_file_id).text)
    assert srv.result_downloads == 1 and srv.downloads[r.output_file_id] == 1
    assert [x["custom_id"] for x in lines] == [f"r{i}" for i in range(6)]
    for line, body in zip(lines, bodies):
        assert line["error"] is None and line["id"] and line["response"]["status_code"] == 200
        assert line["response"]["request_id"]
        assert strip_ids(line["response"]["body"]) == strip_ids(sync_chat(client, body))
    finishes = [x["response"]["body"]["choices"][0]["finish_reason"] for x in lines]
    assert finishes[1] == "length" and finishes[0] == "stop"
    verdict = json.loads(lines[2]["response"]["body"]["choices"][0]["message"]["content"])
    assert set(verdict) == {"critique", "violates", "severity"}
    usage = r.usage
    assert usage.input_tokens == sum(x["response"]["body"]["usage"]["prompt_tokens"] for x in lines)
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens


def test_openai_cached_tokens_in_batch_answers():
    with BatchServer(cached_tokens=2) as s:
        client = oai(s)
        b = submit(client, chat_bodies(2))
        s.finish_all()
        out = jsonl(client.files.content(client.batches.retrieve(b.id).output_file_id).text)
        for line, body in zip(out, chat_bodies(2)):
            usage = line["response"]["body"]["usage"]
            assert usage["prompt_tokens_details"] == {"cached_tokens": 2}
            assert usage == sync_chat(client, body)["usage"]
        assert client.batches.retrieve(b.id).usage.input_tokens_details.cached_tokens == 4


def test_openai_partial_failure_goes_to_the_error_file(srv):
    client = oai(srv)
    bodies = chat_bodies(4)
    bodies[3] = {"model": "stub-model", "messages": []}  # answered with a 400 inside the batch
    srv.fail_requests(lambda cid, body: cid == "r1", status=500)
    b = submit(client, bodies)
    srv.finish_all()
    r = client.batches.retrieve(b.id)
    assert r.status == "completed"  # a batch completes even when some of its requests failed
    assert (r.request_counts.total, r.request_counts.completed, r.request_counts.failed) == (4, 2, 2)
    ok = jsonl(client.files.content(r.output_file_id).text)
    bad = {x["custom_id"]: x for x in jsonl(client.files.content(r.error_file_id).text)}
    assert [x["custom_id"] for x in ok] == ["r0", "r2"]
    assert set(bad) == {"r1", "r3"}
    assert bad["r1"]["response"]["status_code"] == 500 and bad["r1"]["error"] is None
    assert bad["r1"]["response"]["body"]["error"]["type"] == "server_error"
    assert bad["r3"]["response"]["status_code"] == 400
    assert "messages" in bad["r3"]["response"]["body"]["error"]["message"]
    assert srv.result_downloads == 2


def test_fail_requests_times(srv):
    client = oai(srv)
    rule = srv.fail_requests(lambda cid, body: True, status=429, times=1)
    b = submit(client, chat_bodies(3))
    srv.finish_all()
    r = client.batches.retrieve(b.id)
    assert (r.request_counts.completed, r.request_counts.failed) == (2, 1) and rule.remaining == 0
    (line,) = jsonl(client.files.content(r.error_file_id).text)
    assert line["custom_id"] == "r0" and line["response"]["status_code"] == 429


def test_openai_error_lines_without_a_response(srv):
    client = oai(srv)
    srv.fail_requests(lambda cid, body: cid == "r0", code="server_error", times=1)
    srv.fail_requests(lambda cid, body: cid == "r1", code="batch_cancelled", message="Cancelled before it ran.")
    b = submit(client, chat_bodies(3))
    srv.finish_all()
    r = client.batches.retrieve(b.id)
    assert r.status == "completed"
    assert (r.request_counts.total, r.request_counts.completed, r.request_counts.failed) == (3, 1, 1)
    assert [x["custom_id"] for x in jsonl(client.files.content(r.output_file_id).text)] == ["r2"]
    bad = {x["custom_id"]: x for x in jsonl(client.files.content(r.error_file_id).text)}
    assert bad["r0"]["response"] is None and bad["r0"]["error"]["code"] == "server_error"
    assert bad["r1"]["response"] is None
    assert bad["r1"]["error"] == {"code": "batch_cancelled", "message": "Cancelled before it ran."}


def test_openai_expire_keeps_done_results(srv):
    client = oai(srv)
    b = submit(client, chat_bodies(5))
    srv.advance(b.id, requests=2)
    srv.expire(b.id)
    r = client.batches.retrieve(b.id)
    assert r.status == "expired" and r.expired_at
    assert (r.request_counts.total, r.request_counts.completed, r.request_counts.failed) == (5, 2, 0)
    done = jsonl(client.files.content(r.output_file_id).text)
    assert [x["custom_id"] for x in done] == ["r0", "r1"]
    assert strip_ids(done[1]["response"]["body"]) == strip_ids(sync_chat(client, chat_bodies(5)[1]))
    expired = jsonl(client.files.content(r.error_file_id).text)
    assert [x["custom_id"] for x in expired] == ["r2", "r3", "r4"]
    assert all(x["response"] is None and x["error"]["code"] == "batch_expired" for x in expired)
    assert srv.advance() == 0  # an ended batch does not move


def test_openai_cancel(srv):
    client = oai(srv)
    b = submit(client, chat_bodies(3))
    srv.advance(b.id, requests=1)
    c = client.batches.cancel(b.id)
    assert c.status == "cancelling" and c.cancelling_at
    assert client.batches.retrieve(b.id).status == "cancelling"
    assert srv.advance(b.id) == 0  # no request is answered once cancelling
    r = client.batches.retrieve(b.id)
    assert r.status == "cancelled" and r.cancelled_at and r.error_file_id is None
    assert [x["custom_id"] for x in jsonl(client.files.content(r.output_file_id).text)] == ["r0"]
    with pytest.raises(openai.BadRequestError):
        client.batches.cancel(b.id)
    # cancelled before anything ran: no output file at all
    b2 = submit(client, chat_bodies(2))
    client.batches.cancel(b2.id)
    srv.finish_all()
    r2 = client.batches.retrieve(b2.id)
    assert r2.status == "cancelled" and r2.output_file_id is None and r2.error_file_id is None


def test_openai_invalid_input_file_fails_when_validated(srv):
    client = oai(srv)
    body = chat_bodies(1)[0]
    rows = [{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": body},
            {"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": body},
            {"custom_id": "b", "method": "POST", "url": "/v1/embeddings", "body": body}]
    f = client.files.create(file=("bad.jsonl", "".join(json.dumps(r) + "\n" for r in rows).encode() + b"{oops\n"),
                            purpose="batch")
    b = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert b.status == "validating"
    srv.advance()
    r = client.batches.retrieve(b.id)
    assert r.status == "failed" and r.failed_at and r.output_file_id is None
    assert [(e.code, e.line) for e in r.errors.data] == [("duplicate_custom_id", 2), ("mismatched_endpoint", 3),
                                                         ("invalid_json_line", 4)]
    assert r.request_counts.total == 0


def test_openai_create_is_refused(srv):
    client = oai(srv)
    with pytest.raises(openai.NotFoundError):
        client.batches.create(input_file_id="file-missing", endpoint="/v1/chat/completions", completion_window="24h")
    f = client.files.create(file=("x.jsonl", input_file(chat_bodies(1))), purpose="user_data")
    with pytest.raises(openai.BadRequestError, match="purpose"):
        client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    f = client.files.create(file=("x.jsonl", input_file(chat_bodies(1))), purpose="batch")
    with pytest.raises(openai.BadRequestError, match="metadata"):
        client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h",
                              metadata={f"k{i}": "v" for i in range(17)})
    with pytest.raises(openai.BadRequestError, match="endpoint"):
        client.batches.create(input_file_id=f.id, endpoint="/v1/embeddings", completion_window="24h")
    with pytest.raises(openai.NotFoundError):
        client.batches.retrieve("batch_nope")
    assert srv.batches_created == 0


def test_openai_list_pages_newest_first(srv):
    client = oai(srv)
    ids = [submit(client, chat_bodies(1), metadata={"n": str(i)}).id for i in range(5)]
    first = client.batches.list(limit=2)
    assert [b.id for b in first.data] == ids[::-1][:2] and first.has_more
    assert [b.id for b in client.batches.list(limit=2)] == ids[::-1]  # the SDK pages on with `after`
    assert [b.id for b in client.batches.list(after=ids[2])] == [ids[1], ids[0]]
    assert srv.calls["batches.list"] == 5  # 1 + 3 pages + 1
    with pytest.raises(openai.BadRequestError):
        client.batches.list(limit=101)


def test_file_delete_and_list(srv):
    client = oai(srv)
    a = client.files.create(file=("a.jsonl", b"{}\n"), purpose="batch")
    b = client.files.create(file=("b.jsonl", b"{}\n"), purpose="user_data")
    assert [f.id for f in client.files.list()] == [b.id, a.id]
    assert [f.id for f in client.files.list(order="asc")] == [a.id, b.id]
    d = client.files.delete(a.id)
    assert d.deleted and d.id == a.id
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(a.id)
    assert srv.files_uploaded == 2


# --- faults on the batch endpoints -------------------------------------------------------------------


def test_create_500_creates_nothing(srv):
    client = oai(srv)
    srv.fault_on("batches.create", "500")
    with pytest.raises(openai.InternalServerError):
        submit(client, chat_bodies(1))
    assert srv.batches_created == 0 and srv.calls["batches.create"] == 1
    assert client.batches.list().data == []
    submit(client, chat_bodies(1))
    assert srv.batches_created == 1


def test_lost_create_reply_is_found_by_listing(srv):
    """The provider holds the batch but the client never learned its id: the list shows it, metadata included."""
    client = oai(srv)
    srv.fault_on("batches.create", "lost")
    with pytest.raises(openai.APIConnectionError):
        submit(client, chat_bodies(2), metadata={"job": "run-7", "chunk": "3"})
    assert srv.batches_created == 1
    found = [b for b in client.batches.list() if (b.metadata or {}).get("job") == "run-7"]
    assert len(found) == 1 and found[0].metadata == {"job": "run-7", "chunk": "3"}
    srv.finish_all()
    assert client.batches.retrieve(found[0].id).request_counts.completed == 2


def test_sdk_retry_after_lost_create_makes_a_second_batch(srv):
    """Neither SDK sends an idempotency key: a retried create after a lost reply creates the batch twice."""
    srv.fault_on("batches.create", "lost")
    b = submit(oai(srv, retries=1), chat_bodies(1), metadata={"job": "dup"})
    assert srv.batches_created == 2 and srv.calls["batches.create"] == 2
    assert [x.id for x in oai(srv).batches.list()][0] == b.id
    srv.fault_on("messages.batches.create", "lost")
    ant(srv, retries=1).messages.batches.create(requests=ant_requests(1))
    assert len(srv.batches("anthropic")) == 2


def test_truncated_download_then_retry(srv):
    client = oai(srv)
    b = submit(client, chat_bodies(3))
    srv.finish_all()
    out = client.batches.retrieve(b.id).output_file_id
    srv.fault_on("files.content", "truncated")
    with pytest.raises(openai.APIConnectionError):
        client.files.content(out)
    assert len(jsonl(client.files.content(out).text)) == 3
    assert srv.result_downloads == 2 and srv.downloads[out] == 2


def test_held_create_is_not_acted_on_until_resume(srv):
    """hold_after/pause hold batch POSTs like any API request: the batch exists only once the create is answered."""
    client = oai(srv, retries=0)
    f = client.files.create(file=("r.jsonl", input_file(chat_bodies(1))), purpose="batch")
    srv.pause()
    with ThreadPoolExecutor(1) as pool:
        fut = pool.submit(client.batches.create, input_file_id=f.id, endpoint="/v1/chat/completions",
                          completion_window="24h")
        srv.wait_for_requests(2)
        assert srv.batches_created == 0 and srv.in_flight == 1 and not fut.done()
        srv.resume()
        assert fut.result().status == "validating"
    assert srv.batches_created == 1


def test_fault_on_unknown_route(srv):
    with pytest.raises(ValueError, match="unknown route"):
        srv.fault_on("batches.nope", "500")
    assert "messages.batches.results" in ROUTE_NAMES


def test_sync_api_still_served(srv):
    assert oai(srv).chat.completions.create(**chat_bodies(1)[0]).choices[0].message.content
    assert ant(srv).messages.create(**message_params(0)).content[0].text
    assert srv.count("/v1/chat/completions") == 1 and srv.count("/v1/messages") == 1


# --- Anthropic Message Batches ----------------------------------------------------------------------


def test_anthropic_batch_lifecycle_answers_like_sync(srv):
    client = ant(srv)
    mb = client.messages.batches.create(requests=ant_requests(6))
    assert mb.processing_status == "in_progress" and mb.results_url is None
    assert mb.request_counts.processing == 6 and mb.expires_at > mb.created_at
    assert srv.batches_created == 1 and srv.submitted[mb.id] == 6
    with pytest.raises(anthropic.AnthropicError, match="results_url"):
        client.messages.batches.results(mb.id)  # the SDK refuses before asking: no results_url yet
    assert srv.calls["messages.batches.results"] == 0

    assert srv.advance(mb.id, requests=4) == 4
    r = client.messages.batches.retrieve(mb.id)
    # counts stay in `processing` until the whole batch ends, as Anthropic documents
    assert r.processing_status == "in_progress" and r.request_counts.processing == 6
    assert r.request_counts.succeeded == 0
    srv.advance(mb.id, finish=False)
    assert client.messages.batches.retrieve(mb.id).processing_status == "in_progress"
    srv.advance(mb.id)
    r = client.messages.batches.retrieve(mb.id)
    assert r.processing_status == "ended" and r.ended_at and r.results_url.endswith(f"/{mb.id}/results")
    assert (r.request_counts.processing, r.request_counts.succeeded) == (0, 6)

    results = list(client.messages.batches.results(mb.id))
    assert [x.custom_id for x in results] == [f"q{i}" for i in range(6)]
    assert srv.result_downloads == 1 and srv.downloads[mb.id] == 1
    for x, i in zip(results, range(6)):
        assert x.result.type == "succeeded"
        sync = client.messages.create(**message_params(i))
        assert strip_ids(x.result.message.model_dump()) == strip_ids(sync.model_dump())
    assert results[1].result.message.stop_reason == "max_tokens"
    tool = results[2].result.message
    assert tool.stop_reason == "tool_use" and tool.content[0].name == "verdict"
    assert set(tool.content[0].input) == {"critique", "violates", "severity"}

    deleted = client.messages.batches.delete(mb.id)
    assert deleted.type == "message_batch_deleted"
    with pytest.raises(anthropic.NotFoundError):
        client.messages.batches.retrieve(mb.id)


def test_anthropic_cache_usage():
    with BatchServer(cached_tokens=5, cache_write_tokens=2) as s:
        client = ant(s)
        mb = client.messages.batches.create(requests=ant_requests(1))
        s.finish_all()
        (x,) = client.messages.batches.results(mb.id)
        u = x.result.message.usage
        assert (u.cache_read_input_tokens, u.cache_creation_input_tokens) == (5, 2)
        assert u == client.messages.create(**message_params(0)).usage


def test_anthropic_errored_expired_canceled(srv):
    client = ant(srv)
    srv.fail_requests(lambda cid, params: cid == "q1", status=503)
    reqs = ant_requests(4)
    reqs[3]["params"] = {"model": "stub-model", "messages": [{"role": "user", "content": "no max_tokens"}]}
    mb = client.messages.batches.create(requests=reqs)
    srv.finish_all()
    res = results_by_id(client, mb.id)
    assert [res[k].type for k in ("q0", "q1", "q2", "q3")] == ["succeeded", "errored", "succeeded", "errored"]
    assert res["q1"].error.error.type == "overloaded_error" and res["q1"].error.type == "error"
    assert res["q3"].error.error.type == "invalid_request_error"
    counts = client.messages.batches.retrieve(mb.id).request_counts
    assert (counts.succeeded, counts.errored, counts.processing) == (2, 2, 0)

    exp = client.messages.batches.create(requests=ant_requests(3, prefix="e"))
    srv.advance(exp.id, requests=1)
    srv.expire(exp.id)
    res = results_by_id(client, exp.id)
    assert [res[k].type for k in ("e0", "e1", "e2")] == ["succeeded", "expired", "expired"]
    assert client.messages.batches.retrieve(exp.id).request_counts.expired == 2

    can = client.messages.batches.create(requests=ant_requests(3, prefix="c"))
    srv.advance(can.id, requests=2)
    c = client.messages.batches.cancel(can.id)
    assert c.processing_status == "canceling" and c.cancel_initiated_at
    with pytest.raises(anthropic.BadRequestError):
        client.messages.batches.delete(can.id)  # not ended yet
    srv.advance(can.id)
    r = client.messages.batches.retrieve(can.id)
    assert r.processing_status == "ended"
    assert (r.request_counts.succeeded, r.request_counts.canceled) == (2, 1)
    assert results_by_id(client, can.id)["c2"].type == "canceled"
    with pytest.raises(anthropic.BadRequestError):
        client.messages.batches.cancel(can.id)


def test_anthropic_errored_types_and_single_expired_or_canceled_results(srv):
    client = ant(srv)
    for cid, code in (("q0", "billing_error"), ("q1", "expired"), ("q2", "canceled"), ("q3", "timeout_error")):
        srv.fail_requests(lambda c, params, want=cid: c == want, code=code)
    mb = client.messages.batches.create(requests=ant_requests(5))
    srv.finish_all()
    res = results_by_id(client, mb.id)
    assert [res[k].type for k in ("q0", "q1", "q2", "q3", "q4")] == [
        "errored", "expired", "canceled", "errored", "succeeded"]
    assert (res["q0"].error.error.type, res["q3"].error.error.type) == ("billing_error", "timeout_error")
    counts = client.messages.batches.retrieve(mb.id).request_counts
    assert (counts.succeeded, counts.errored, counts.expired, counts.canceled) == (1, 2, 1, 1)


def test_anthropic_create_is_refused(srv):
    client = ant(srv)
    # Message batches take no metadata (the SDK has no such argument; the API refuses unknown fields)
    with pytest.raises(anthropic.BadRequestError, match="metadata"):
        client.messages.batches.create(requests=ant_requests(1), extra_body={"metadata": {"job": "x"}})
    with pytest.raises(anthropic.BadRequestError, match="duplicate"):
        client.messages.batches.create(requests=ant_requests(1) + ant_requests(1))
    with pytest.raises(anthropic.BadRequestError, match="custom_id"):
        client.messages.batches.create(requests=[{"custom_id": "has space", "params": message_params(0)}])
    assert srv.batches_created == 0


def test_anthropic_list_pages_and_lost_create(srv):
    client = ant(srv)
    ids = [client.messages.batches.create(requests=ant_requests(1)).id for _ in range(4)]
    srv.fault_on("messages.batches.create", "lost")
    with pytest.raises(anthropic.APIConnectionError):
        client.messages.batches.create(requests=ant_requests(2, prefix="lost"))
    lost = srv.batches("anthropic")[-1].id
    newest_first = [lost, *ids[::-1]]
    page = client.messages.batches.list(limit=2)
    assert [b.id for b in page.data] == newest_first[:2] and page.has_more
    assert [b.id for b in client.messages.batches.list(limit=2)] == newest_first
    before = client.messages.batches.list(before_id=ids[1], limit=2)
    assert [b.id for b in before.data] == [ids[3], ids[2]] and before.has_more
    assert [b.id for b in before] == [ids[3], ids[2], lost]  # paging on towards the newest with `before_id`
    # without metadata, the recovered batch is recognised by its results' custom_ids once it has ended
    srv.finish_all()
    assert set(results_by_id(client, lost)) == {"lost0", "lost1"}


def test_anthropic_fault_on_results_and_reversed_order():
    with BatchServer(results_order="reversed") as s:
        client = ant(s)
        mb = client.messages.batches.create(requests=ant_requests(3))
        s.finish_all()
        s.fault_on("messages.batches.results", "500")
        with pytest.raises(anthropic.InternalServerError):
            list(client.messages.batches.results(mb.id))
        assert [x.custom_id for x in client.messages.batches.results(mb.id)] == ["q2", "q1", "q0"]
        assert s.calls["messages.batches.results"] == 2 and s.result_downloads == 1
