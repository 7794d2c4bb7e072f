"""Errors carry their context (issue 18): provider, model, HTTP status and stage as fields, the SDK exception as
`__cause__`, and a one-line redacted `str`. Real SDKs against the loopback stub server; nothing is patched."""

from __future__ import annotations

import asyncio
import json
import socket
import traceback
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest

from cai.calls import GenConfig, Request
from cai.constitution import load as load_constitution
from cai.core.engine import Engine
from cai.core.pipeline import Pipeline
from cai.errors import (
    AuthError,
    ConnectFailed,
    EndpointDown,
    NotFound,
    ProviderError,
    RateLimited,
    RequestRejected,
    TransientError,
)
from cai.providers import get_model
from cai.settings import RunSettings
from cai.store import Store
from helpers import write_prompts
from servers import StubServer, error_body

KEY = "sk-test-PLANTED-5ecret-9f8e7d6c5b4a"
SDK = {"openai": openai, "anthropic": anthropic}
EXPECTED = {"429": RateLimited, "500": TransientError, "400": RequestRejected, "401": AuthError, "404": NotFound}
REQUEST = Request(messages=({"role": "user", "content": "question number 0?"},), config=GenConfig(max_tokens=16))


@pytest.fixture(autouse=True)
def planted_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """Both SDKs send KEY to the server, so any copy of it in an error would be seen."""
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)


def url_of(srv: StubServer, provider: str) -> str:
    return srv.url if provider == "openai" else srv.anthropic_url


def closed_url(provider: str) -> str:
    """A loopback base URL where nothing listens (the port was free a moment ago)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}" + ("/v1" if provider == "openai" else "")


def failure(spec: str, base_url: str) -> ProviderError:
    """The error one call of `spec` at `base_url` raises."""

    async def call() -> None:
        model = get_model(spec, base_url)
        try:
            await model.complete(REQUEST)
        finally:
            await model.aclose()

    with pytest.raises(ProviderError) as info:
        asyncio.run(call())
    return info.value


def assert_safe_text(e: BaseException) -> None:
    """One line, no key in str or repr, and no key anywhere in the formatted traceback with its cause."""
    assert "\n" not in str(e) and "\n" not in repr(e)
    assert KEY not in str(e) and KEY not in repr(e)
    assert KEY not in "".join(traceback.format_exception(e))


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
@pytest.mark.parametrize("fault", ["429", "500", "400", "401", "404"])
def test_http_error_carries_provider_model_status_and_sdk_cause(stub_server, provider, fault):
    stub_server.add_fault(fault, times=1, retry_after=2.5 if fault == "429" else None)
    url = url_of(stub_server, provider)
    e = failure(f"{provider}:stub", url)
    status = int(fault)
    assert type(e) is EXPECTED[fault]
    assert (e.provider, e.model, e.status, e.stage) == (provider, "stub", status, None)
    assert isinstance(e.__cause__, SDK[provider].APIStatusError) and e.__cause__.status_code == status
    server_says = error_body(provider, status)["error"]["message"]
    assert str(e).startswith(f"HTTP {status} from {url}: ") and server_says in str(e)
    assert_safe_text(e)
    if fault == "429":
        assert e.retry_after == 2.5


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_connection_refused_carries_context_without_status(provider):
    e = failure(f"{provider}:stub", closed_url(provider))
    assert type(e) is ConnectFailed
    assert (e.provider, e.model, e.status, e.stage) == (provider, "stub", None, None)
    assert isinstance(e.__cause__, SDK[provider].APIConnectionError)
    assert_safe_text(e)


class EchoKeyServer(StubServer):
    """Answers every API call 401 with the key it was sent inside the message, as some proxies do."""

    def _answer(self, h: Any, kind: str, path: str, parsed: Any) -> None:
        sent = h.headers.get("x-api-key") or h.headers.get("Authorization", "").removeprefix("Bearer ")
        return h.send_json(401, error_body(kind, 401, f"Incorrect API key provided: {sent}"))


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_key_echoed_by_server_is_redacted_though_cause_is_chained(provider):
    with EchoKeyServer() as srv:
        e = failure(f"{provider}:stub", url_of(srv, provider))
    assert isinstance(e, AuthError) and e.status == 401 and e.provider == provider
    assert isinstance(e.__cause__, SDK[provider].AuthenticationError)
    assert KEY in str(e.__cause__)  # the server did send the key back, so a leak would show
    assert "Incorrect API key provided: ***" in str(e)
    assert KEY not in str(e) and KEY not in repr(e) and KEY not in str(e.args)


def test_with_stage_is_a_copy_with_the_same_cause_and_fields():
    cause = ValueError("the SDK's exception")
    try:
        raise RateLimited("HTTP 429 from here:\n  slow\r\ndown", 1.5, provider="openai", model="m",
                          status=429) from cause
    except RateLimited as raised:
        original = raised
    staged = original.with_stage("critique")
    assert type(staged) is RateLimited and staged is not original
    assert (staged.provider, staged.model, staged.status, staged.stage, staged.retry_after) == (
        "openai", "m", 429, "critique", 1.5)
    assert original.stage is None
    assert staged.__cause__ is cause and staged.__traceback__ is original.__traceback__
    assert str(staged) == "HTTP 429 from here: slow down"
    assert repr(staged) == ("RateLimited('HTTP 429 from here: slow down', provider='openai', model='m', "
                            "status=429, stage='critique', retry_after=1.5)")


@pytest.mark.parametrize("how", ["404", "refused"])
def test_endpoint_down_carries_the_context_of_its_cause(tmp_path, stub_server, how):
    if how == "404":
        stub_server.add_fault("404", times=1)
    url = stub_server.url if how == "404" else closed_url("openai")
    store = Store(tmp_path)
    engine = Engine(store, {"generator": get_model("openai:stub", url)}, max_retries=0)

    async def call() -> None:
        try:
            await engine.call("generator", REQUEST)
        finally:
            await engine.aclose()

    try:
        with pytest.raises(EndpointDown) as info:
            asyncio.run(call())
    finally:
        store.close()
    e = info.value
    assert e.exit_code == 4 and e.fatal
    assert (e.provider, e.model, e.status) == ("openai", "stub", 404 if how == "404" else None)
    assert isinstance(e.__cause__, NotFound if how == "404" else ConnectFailed)
    assert isinstance(e.__cause__.__cause__, openai.NotFoundError if how == "404" else openai.APIConnectionError)
    assert_safe_text(e)


def is_stage(stage: str, prompt: str):
    """A stub `when` matching `stage`'s request (draft, critique or revise) for the record with `prompt`."""

    def when(path: str, body: Any) -> bool:
        text = json.dumps(body)
        kind = "revise" if "Revision request" in text else "critique" if "verdict" in text else "draft"
        return kind == stage and prompt in text

    return when


@pytest.mark.parametrize("stage", ["draft", "critique", "revise"])
def test_pipeline_names_the_stage_in_the_error_row_and_on_a_fatal_error(tmp_path, stub_server, stage):
    """p0 fails at `stage` with a 400 (an error row); then p1 gets a 401 at `stage`, which stops the run."""
    stub_server.add_fault("400", times=1, when=is_stage(stage, "question number 0?"))
    stub_server.add_fault("401", times=1, when=is_stage(stage, "question number 1?"))
    inp = write_prompts(tmp_path / "in.jsonl", ["question number 0?", "question number 1?"])
    run_dir: Path = tmp_path / "run"
    run_dir.mkdir()
    settings = RunSettings.from_options(input=inp, out=run_dir, model="openai:stub", base_url=stub_server.url,
                                        rounds=1, concurrency=1, max_retries=0, max_tokens=16)
    model = get_model("openai:stub", stub_server.url)
    store = Store(run_dir)
    engine = Engine(store, {"generator": model, "critic": model, "reviser": model}, max_retries=0, concurrency=1)
    pipeline = Pipeline(settings, load_constitution("default"), store, engine)

    async def run() -> None:
        try:
            await pipeline.run()
        finally:
            await engine.aclose()

    try:
        with pytest.raises(AuthError) as info:
            asyncio.run(run())
        rows = [(r["id"], r["stage"], r["error_class"]) for r in store.errors()]
    finally:
        store.close()
    assert rows == [("p0", stage, "RequestRejected")]
    e = info.value
    assert (e.stage, e.provider, e.model, e.status) == (stage, "openai", "stub", 401)
    assert isinstance(e.__cause__, openai.AuthenticationError)
    assert_safe_text(e)
