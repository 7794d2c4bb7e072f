"""An identical request made by two records at once is sent once: the second waits for the first's answer, so
nothing is paid twice even before the first answer is committed; if the first fails, the second tries itself."""

from __future__ import annotations

import pytest

import cai
from cai.store import Store
from servers import StubServer


def stored_calls(run) -> int:
    store = Store.open_run(run.path, readonly=True)
    try:
        return len(store.call_responses())
    finally:
        store.close()


def test_identical_requests_in_flight_are_sent_once(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    prompts = [{"id": f"p{i}", "prompt": "Name one prime number."} for i in range(6)]  # the same request six times
    with StubServer(latency=0.2) as srv:  # slow enough that all six are in flight together
        run = cai.run(prompts, out=tmp_path / "r", model="openai:stub", base_url=srv.url, rounds=1, max_tokens=16,
                      concurrency=8)
        assert srv.count() == stored_calls(run) == 3  # draft, critique, revision: once each
    assert run.status()["records"]["done"] == 6 and run.invocation["calls"] == 3


@pytest.mark.parametrize("fault", ["400"])
def test_when_the_first_fails_the_others_try_themselves(tmp_path, monkeypatch, fault) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    prompts = [{"id": f"p{i}", "prompt": "Name one prime number."} for i in range(3)]
    with StubServer(latency=0.2) as srv:
        srv.add_fault(fault, times=1)  # the first request is refused: its record fails, the others go on
        run = cai.run(prompts, out=tmp_path / "r", model="openai:stub", base_url=srv.url, rounds=1, max_tokens=16,
                      concurrency=8)
    records = run.status()["records"]
    assert records["failed"] == 1 and records["done"] == 2
