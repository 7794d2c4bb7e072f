"""The loopback test servers, exercised through the real openai and anthropic SDKs."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import anthropic
import openai
import pytest

from servers import EmbeddedAnthropicServer, StubServer

MSGS = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say something."}]
VERDICT_SCHEMA = {
    "type": "object",
    "properties": {"critique": {"type": "string"}, "violates": {"type": "boolean"},
                   "severity": {"type": "integer", "minimum": 0, "maximum": 3}},
    "required": ["critique", "violates", "severity"],
    "additionalProperties": False,
}


# Client timeouts are generous: a loopback answer on a loaded machine must never miss one.
def oai(srv: StubServer, timeout: float = 60.0) -> openai.OpenAI:
    return openai.OpenAI(base_url=srv.url, api_key="test-key", max_retries=0, timeout=timeout)


def ant(srv, timeout: float = 60.0) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=srv.anthropic_url, api_key="test-key", max_retries=0, timeout=timeout)


def chat(client: openai.OpenAI, messages=MSGS, **kw):
    return client.chat.completions.create(model="stub-model", messages=messages, **kw)


def message(client: anthropic.Anthropic, **kw):
    kw.setdefault("max_tokens", 64)
    kw.setdefault("messages", [{"role": "user", "content": "Say something."}])
    return client.messages.create(model="stub-model", **kw)


def check_verdict(v: dict) -> None:
    assert set(v) == {"critique", "violates", "severity"}
    assert isinstance(v["critique"], str) and v["critique"]
    assert isinstance(v["violates"], bool)
    assert v["severity"] in (0, 1, 2, 3)
    assert (v["severity"] > 0) == v["violates"]


# --- replies ---------------------------------------------------------------------------------------


def test_openai_plain_reply_is_deterministic(stub_server):
    client = oai(stub_server)
    a, b = chat(client), chat(client)
    text = a.choices[0].message.content
    assert text == b.choices[0].message.content
    assert len(text.split()) == 12 and all(w.startswith("w") and len(w) == 5 for w in text.split())
    assert a.choices[0].finish_reason == "stop"
    assert a.usage.completion_tokens == 12 and a.usage.total_tokens == a.usage.prompt_tokens + 12
    other = chat(client, messages=[{"role": "user", "content": "Something else."}])
    assert other.choices[0].message.content != text
    assert stub_server.count() == 3 and stub_server.count("/chat/completions") == 3
    assert stub_server.requests[0]["body"]["messages"] == MSGS


def test_max_tokens_cuts_plain_reply(stub_server):
    r = chat(oai(stub_server), max_tokens=3)
    assert len(r.choices[0].message.content.split()) == 3 and r.choices[0].finish_reason == "length"


def test_reply_words_setting():
    with StubServer(reply_words=3) as srv:
        assert len(chat(oai(srv)).choices[0].message.content.split()) == 3


@pytest.mark.parametrize("mode", ["json_schema", "json_object", "prompt"])
def test_openai_structured_reply_parses(stub_server, mode):
    kw = {}
    messages = MSGS
    if mode == "json_schema":
        kw["response_format"] = {"type": "json_schema", "json_schema": {"name": "verdict", "schema": VERDICT_SCHEMA}}
    elif mode == "json_object":
        kw["response_format"] = {"type": "json_object"}
    else:
        messages = [{"role": "system", "content": "Reply with one JSON object and nothing else. It must match "
                     "this JSON schema:\n" + json.dumps(VERDICT_SCHEMA)}, *MSGS]
    client = oai(stub_server)
    r = chat(client, messages=messages, **kw)
    v = json.loads(r.choices[0].message.content)
    check_verdict(v)
    assert json.loads(chat(client, messages=messages, **kw).choices[0].message.content) == v


def test_verdicts_vary_with_request(stub_server):
    client = oai(stub_server)
    rf = {"type": "json_schema", "json_schema": {"name": "verdict", "schema": VERDICT_SCHEMA}}
    seen = {json.loads(chat(client, messages=[{"role": "user", "content": f"q{i}"}],
                            response_format=rf).choices[0].message.content)["violates"] for i in range(16)}
    assert seen == {True, False}


def test_anthropic_plain_and_tool_reply(stub_server):
    client = ant(stub_server)
    r = message(client, system="Be brief.")
    assert r.type == "message" and r.role == "assistant" and r.stop_reason == "end_turn"
    assert r.content[0].type == "text" and len(r.content[0].text.split()) == 12
    assert r.usage.output_tokens == 12
    # the same conversation through either API gets the same text
    assert r.content[0].text == chat(oai(stub_server)).choices[0].message.content
    t = message(client, tools=[{"name": "verdict", "description": "x", "input_schema": VERDICT_SCHEMA}],
                tool_choice={"type": "tool", "name": "verdict"})
    assert t.stop_reason == "tool_use"
    block = t.content[0]
    assert block.type == "tool_use" and block.name == "verdict" and block.id
    check_verdict(block.input)
    assert stub_server.count("/v1/messages") == 2


def test_reply_fn_overrides(stub_server):
    stub_server.reply_fn = lambda kind, body: "not json at all" if kind == "anthropic" else None
    tool = [{"name": "verdict", "input_schema": VERDICT_SCHEMA}]
    r = message(ant(stub_server), tools=tool, tool_choice={"type": "tool", "name": "verdict"})
    assert r.content[0].type == "text" and r.content[0].text == "not json at all"
    stub_server.reply_fn = lambda kind, body: json.dumps({"critique": "c", "violates": True, "severity": 3})
    r = message(ant(stub_server), tools=tool, tool_choice={"type": "tool", "name": "verdict"})
    assert r.content[0].input == {"critique": "c", "violates": True, "severity": 3}
    assert chat(oai(stub_server)).choices[0].message.content.startswith('{"critique": "c"')


def test_logprobs(stub_server):
    client = oai(stub_server)
    r = chat(client, logprobs=True, top_logprobs=3)
    content = r.choices[0].logprobs.content
    assert len(content) == 12 and len(content[0].top_logprobs) == 3
    assert "".join(t.token for t in content) == r.choices[0].message.content
    stub_server.logprobs_fn = lambda body: [[("Yes", -0.1), ("No", -2.4)], [(".", -0.01)]]
    r = chat(client, logprobs=True, top_logprobs=2)
    assert r.choices[0].message.content == "Yes."
    first = r.choices[0].logprobs.content[0]
    assert first.token == "Yes" and [(t.token, t.logprob) for t in first.top_logprobs] == [("Yes", -0.1), ("No", -2.4)]
    assert chat(client).choices[0].logprobs is None


def test_models_endpoint(stub_server):
    assert [m.id for m in oai(stub_server).models.list()] == ["stub-model"]
    assert [m.id for m in ant(stub_server).models.list()] == ["stub-model"]


# --- faults ----------------------------------------------------------------------------------------

STATUS_FAULTS = [("429", "RateLimitError"), ("500", "InternalServerError"), ("503", "InternalServerError"),
                 ("400", "BadRequestError"), ("401", "AuthenticationError"), ("403", "PermissionDeniedError")]


@pytest.mark.parametrize(("kind", "exc"), STATUS_FAULTS)
def test_status_faults_openai(stub_server, kind, exc):
    stub_server.add_fault(kind)
    with pytest.raises(getattr(openai, exc)) as ei:
        chat(oai(stub_server))
    assert ei.value.status_code == int(kind)
    assert isinstance(ei.value.body, dict) and ei.value.body["message"]  # the SDK unwraps {"error": {...}}
    assert chat(oai(stub_server)).choices[0].message.content  # fault used up
    assert stub_server.count() == 2


@pytest.mark.parametrize(("kind", "exc"), STATUS_FAULTS)
def test_status_faults_anthropic(stub_server, kind, exc):
    stub_server.add_fault(kind)
    with pytest.raises(getattr(anthropic, exc)) as ei:
        message(ant(stub_server))
    assert ei.value.status_code == int(kind)
    assert ei.value.body["type"] == "error" and ei.value.body["error"]["message"]
    assert message(ant(stub_server)).content[0].text


def test_retry_after_and_times(stub_server):
    stub_server.add_fault("429", times=2, retry_after=1.5)
    client = oai(stub_server)
    for _ in range(2):
        with pytest.raises(openai.RateLimitError) as ei:
            chat(client)
        assert ei.value.response.headers["retry-after"] == "1.5"
    chat(client)
    assert stub_server.count() == 3


def test_fault_predicate(stub_server):
    stub_server.add_fault("500", when=lambda path, body: path.endswith("/messages"))
    chat(oai(stub_server))  # not matched
    with pytest.raises(anthropic.InternalServerError):
        message(ant(stub_server))
    message(ant(stub_server))


def test_hang_times_out(stub_server):
    stub_server.hang_seconds = 300  # far past the client's timeout: only the timeout can end the call
    stub_server.add_fault("hang")
    with pytest.raises(openai.APITimeoutError):
        chat(oai(stub_server, timeout=0.3))
    stub_server.wait_for_requests(1)
    assert stub_server.in_flight == 1  # the client gave up while the server still held its request
    stub_server.add_fault("hang")
    with pytest.raises(anthropic.APITimeoutError):
        message(ant(stub_server, timeout=0.3))
    assert stub_server.wait_for_requests(2) == 2
    assert stub_server.in_flight == 2


@pytest.mark.parametrize("kind", ["drop", "truncated"])
def test_connection_faults(stub_server, kind):
    stub_server.add_fault(kind, times=2)
    with pytest.raises(openai.APIConnectionError):
        chat(oai(stub_server))
    with pytest.raises(anthropic.APIConnectionError):
        message(ant(stub_server))
    assert chat(oai(stub_server)).choices[0].message.content


def test_invalid_body(stub_server):
    stub_server.add_fault("invalid", times=2)
    with pytest.raises((openai.APIError, ValueError)):
        chat(oai(stub_server))
    with pytest.raises((anthropic.APIError, ValueError)):
        message(ant(stub_server))


def test_notjson_reply(stub_server):
    stub_server.add_fault("notjson", times=2)
    rf = {"type": "json_schema", "json_schema": {"name": "verdict", "schema": VERDICT_SCHEMA}}
    assert chat(oai(stub_server), response_format=rf).choices[0].message.content == "Looks fine to me."
    r = message(ant(stub_server), tools=[{"name": "verdict", "input_schema": VERDICT_SCHEMA}],
                tool_choice={"type": "tool", "name": "verdict"})
    assert r.content[0].type == "text" and r.content[0].text == "Looks fine to me."


def test_unknown_fault_kind(stub_server):
    with pytest.raises(ValueError):
        stub_server.add_fault("418")


# --- concurrency and the script mode ---------------------------------------------------------------


def test_concurrent_async_requests_overlap():
    """64 requests sent at once are all in flight at the server together: the server holds every request
    until it has received all 64, which it never would if the client or the server serialised them."""

    async def run(srv: StubServer) -> tuple[int, list[str]]:
        client = openai.AsyncOpenAI(base_url=srv.url, api_key="test-key", max_retries=0, timeout=600)
        try:
            calls = asyncio.gather(*(client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": str(i)}]) for i in range(64)))
            try:
                await asyncio.to_thread(srv.wait_for_requests, 64)
                held = srv.in_flight  # none answered yet: all 64 are open at the server at once
            finally:
                srv.resume()
            rs = await calls
            return held, [r.choices[0].message.content for r in rs]
        finally:
            await client.close()

    with StubServer() as srv:
        srv.pause()
        held, texts = asyncio.run(run(srv))
        assert held == 64 and srv.max_in_flight == 64
        assert srv.count() == 64
    assert len(set(texts)) == 64


def test_hold_after_and_wait_for_requests(stub_server):
    stub_server.hold_after(1)
    client = oai(stub_server, timeout=600)
    assert chat(client).choices[0].message.content  # the first request is answered as usual
    with ThreadPoolExecutor(1) as pool:
        second = pool.submit(chat, client, [{"role": "user", "content": "second"}])
        assert stub_server.wait_for_requests(2) == 2
        assert not second.done()  # received, and held
        stub_server.resume()
        assert second.result().choices[0].message.content
    assert stub_server.max_in_flight >= 1 and stub_server.count() == 2
    assert stub_server.wait_for_requests(5, until=lambda: True) == 2  # `until` ends the wait early
    with pytest.raises(TimeoutError, match="received 2 of 3 requests"):
        stub_server.wait_for_requests(3, timeout=0.01)


def test_script_mode_stats_and_faults():
    script = Path(__file__).with_name("servers.py")
    proc = subprocess.Popen([sys.executable, str(script), "--latency", "0", "--reply-words", "5"],
                            stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("PORT ")
        base = f"http://127.0.0.1:{int(line.split()[1])}"
        client = openai.OpenAI(base_url=base + "/v1", api_key="test-key", max_retries=0, timeout=60)
        assert len(chat(client).choices[0].message.content.split()) == 5
        req = urllib.request.Request(base + "/_faults", data=json.dumps({"kind": "503", "times": 1}).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as r:
            assert r.status == 200
        with pytest.raises(openai.InternalServerError):
            chat(client)
        anthropic.Anthropic(base_url=base, api_key="k", max_retries=0).messages.create(
            model="m", max_tokens=10, messages=[{"role": "user", "content": "hi"}])
        with urllib.request.urlopen(base + "/_stats", timeout=60) as r:
            stats = json.loads(r.read())
        assert stats["requests"] == 3
        assert stats["by_path"] == {"/v1/chat/completions": 2, "/v1/messages": 1}
    finally:
        proc.terminate()
        proc.wait(timeout=60)


# --- the embedded model ----------------------------------------------------------------------------


@pytest.mark.slow
def test_embedded_anthropic_server(anthropic_embedded: EmbeddedAnthropicServer):
    client = ant(anthropic_embedded, timeout=300)
    before = anthropic_embedded.count("/v1/messages")  # the server is shared by the session
    r = client.messages.create(model="smollm2", max_tokens=8, system="You are terse.",
                               messages=[{"role": "user", "content": [{"type": "text", "text": "Say hi."}]}])
    assert r.content[0].type == "text" and r.content[0].text
    assert r.stop_reason in ("end_turn", "max_tokens")
    assert r.usage.input_tokens > 0 and 0 < r.usage.output_tokens <= 8
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    # anthropic>=2 has no `temperature` argument; the server still reads it from the body
    t = client.messages.create(model="smollm2", max_tokens=32, extra_body={"temperature": 0.0},
                               messages=[{"role": "user", "content": "Is the sky blue? Answer in JSON."}],
                               tools=[{"name": "answer", "input_schema": schema}],
                               tool_choice={"type": "tool", "name": "answer"})
    assert t.stop_reason == "tool_use", t.content
    assert t.content[0].type == "tool_use" and t.content[0].name == "answer"
    assert isinstance(t.content[0].input["ok"], bool)
    assert anthropic_embedded.count("/v1/messages") - before == 2


@pytest.mark.parametrize("framing", ["length", "chunked"])
def test_a_request_cut_off_mid_body_is_not_counted(stub_server, framing):
    """A client killed while sending a body (as a Ray worker is) never had its request processed: the server
    neither counts nor answers it, and the next whole request is counted as usual."""
    import socket

    body = json.dumps({"model": "stub", "messages": MSGS}).encode()
    head = "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    if framing == "length":
        raw = (head + f"Content-Length: {len(body)}\r\n\r\n").encode() + body[:10]
    else:
        raw = (head + "Transfer-Encoding: chunked\r\n\r\n").encode() + f"{len(body):x}\r\n".encode() + body[:10]
    with socket.create_connection(("127.0.0.1", stub_server.port)) as s:
        s.sendall(raw)
        s.shutdown(socket.SHUT_WR)
        assert s.recv(1024) == b""  # closed without an answer
    chat(oai(stub_server))
    assert stub_server.count() == 1 and isinstance(stub_server.requests[0]["body"], dict)
