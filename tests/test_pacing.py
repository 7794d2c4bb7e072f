"""Pacing and back-off: --rpm is never exceeded (counted on the server), AIMD halves on 429 and recovers,
and outputs do not depend on concurrency."""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import time

import pytest

from cai.core.pacing import AIMDLimiter, Pacer
from helpers import cai, write_prompts


def run(srv, inp, out, *extra):
    return cai("run", inp, "--out", out, "--model", "openai:stub", "--base-url", srv.url, "--rounds", "1",
               "--max-tokens", "16", "--quiet", "--json", *extra, env={"OPENAI_API_KEY": "k"})


def test_outputs_identical_at_concurrency_1_and_64(tmp_path, stub_server):
    inp = write_prompts(tmp_path / "in.jsonl", [f"q{i}?" for i in range(40)])
    assert run(stub_server, inp, tmp_path / "c1", "--concurrency", "1").exit_code == 0
    assert run(stub_server, inp, tmp_path / "c64", "--concurrency", "64").exit_code == 0
    for name in ("sft.jsonl", "pairs.jsonl", "critiques.jsonl"):
        assert (tmp_path / "c1" / name).read_text() == (tmp_path / "c64" / name).read_text()


def test_rpm_is_never_exceeded(tmp_path, stub_server, monkeypatch):
    """Every request starts through the endpoint's pacer, 60/rpm s after the one before; the server never
    holds more requests at any moment than the pacer had started by then. (Starts are read from the pacer's
    own clock: the server's arrival times also carry scheduling delays, which a loaded machine bunches.)"""
    starts: list[float] = []
    real_wait = Pacer.wait

    async def recording_wait(self: Pacer, tokens: int = 0) -> None:
        await real_wait(self, tokens)
        starts.append(self._log[-1][0])  # the start it just admitted (no await since it was logged)

    monkeypatch.setattr(Pacer, "wait", recording_wait)
    rpm = 600  # 10 per second
    inp = write_prompts(tmp_path / "in.jsonl", [f"q{i}?" for i in range(8)])
    res = run(stub_server, inp, tmp_path / "r", "--concurrency", "8", "--rpm", str(rpm))
    assert res.exit_code == 0, res.stderr
    arrivals = sorted(r["t"] for r in stub_server.requests)
    assert len(arrivals) == len(starts) == 24
    gap = 60 / rpm
    assert all(b - a >= gap - 1e-9 for a, b in itertools.pairwise(starts))  # so at most rpm/60 a second
    assert starts[-1] - starts[0] >= (len(starts) - 1) * gap - 1e-9
    # the k-th request the server received was sent no earlier than the k-th start (same clock, same process)
    assert all(arrived >= started for arrived, started in zip(arrivals, sorted(starts), strict=True))


def test_aimd_backs_off_on_429_burst_and_recovers(tmp_path, stub_server):
    stub_server.latency = 0.01
    stub_server.add_fault("429", times=12, retry_after=0.05)
    inp = write_prompts(tmp_path / "in.jsonl", [f"q{i}?" for i in range(80)])
    res = run(stub_server, inp, tmp_path / "r", "--concurrency", "16", "--max-retries", "8")
    assert res.exit_code == 0, res.stderr
    (cap,) = json.loads(res.stdout)["this_invocation"]["concurrency"].values()
    assert cap["max"] == 16
    assert cap["low"] <= 8  # halved at least once
    assert cap["end"] == 16  # and recovered additively
    assert stub_server.count() == 80 * 3 + 12


def test_aimd_limiter_unit():
    async def main() -> None:
        lim = AIMDLimiter(8, cooldown=0.0)
        lim.on_rate_limited()
        assert lim.limit == 4
        lim.on_rate_limited()
        lim.on_rate_limited()
        lim.on_rate_limited()
        assert lim.limit == 1 and lim.low == 1
        running = 0
        peak = 0

        async def job() -> None:
            nonlocal running, peak
            async with lim.slot():
                running += 1
                peak = max(peak, running)
                await asyncio.sleep(0.001)
                running -= 1
            lim.on_success()

        await asyncio.gather(*(job() for _ in range(200)))
        assert lim.limit == 8 and peak <= 8

    asyncio.run(main())


def test_pacer_spacing_unit():
    async def main() -> list[float]:
        pacer = Pacer(rpm=1200)  # one every 50 ms
        before = time.monotonic()
        await asyncio.gather(*(pacer.wait() for _ in range(6)))  # all asking at once
        after = time.monotonic()
        starts = [t for t, _ in pacer._log]  # when each was admitted, by the pacer's clock
        assert len(starts) == 6 and before <= starts[0] and starts[-1] <= after
        return starts

    starts = asyncio.run(main())
    assert all(b - a >= 0.05 - 1e-9 for a, b in itertools.pairwise(starts))


def _flaky(failures: list[BaseException]):
    calls = []

    async def fn() -> str:
        calls.append(asyncio.get_running_loop().time())
        if failures:
            raise failures.pop(0)
        return "ok"
    return fn, calls


def test_with_retries_first_try_then_replayed_into_tenacity():
    from cai.core.retry import with_retries
    from cai.errors import RateLimited, RequestRejected, TransientError

    fn, calls = _flaky([])
    assert asyncio.run(with_retries(fn, 3)) == "ok" and len(calls) == 1

    fn, calls = _flaky([TransientError("a"), TransientError("b")])
    assert asyncio.run(with_retries(fn, 3)) == "ok" and len(calls) == 3

    fn, calls = _flaky([RateLimited("slow down", retry_after=0.3)])  # the server's wait is honoured
    assert asyncio.run(with_retries(fn, 3)) == "ok" and len(calls) == 2
    assert calls[1] - calls[0] >= 0.29

    fn, calls = _flaky([TransientError(str(i)) for i in range(5)])  # 1 try + 2 retries, then the last error
    try:
        asyncio.run(with_retries(fn, 2))
    except TransientError as e:
        assert str(e) == "2" and len(calls) == 3
    else:
        raise AssertionError("expected TransientError")

    fn, calls = _flaky([RequestRejected("bad request")])  # not retryable: one try
    try:
        asyncio.run(with_retries(fn, 3))
    except RequestRejected:
        assert len(calls) == 1
    else:
        raise AssertionError("expected RequestRejected")


def test_pacer_refuses_a_request_larger_than_tpm_at_once():
    from cai.errors import InputError, ProviderError

    async def main() -> Pacer:
        pacer = Pacer(tpm=100)
        with pytest.raises(InputError) as e:
            await pacer.wait(101)
        assert str(e.value) == "--tpm 100 is smaller than one request (~101 tokens); raise --tpm"
        assert e.value.exit_code == 2 and not isinstance(e.value, ProviderError)  # stops the run, not one record
        await pacer.wait(100)  # a request of exactly the cap is admitted
        return pacer

    pacer = asyncio.run(main())
    assert [n for _, n in pacer._log] == [100]  # the refused request took nothing from the window


def test_tpm_below_one_request_stops_the_run_with_one_line(tmp_path, stub_server):
    """A --tpm below what every record needs is refused before the run (tests/test_base_url.py); one that only a
    long prompt's draft exceeds (~2,016 tokens here) stops the run at that request, before sending it."""
    inp = write_prompts(tmp_path / "in.jsonl", ["x" * 8000])
    res = run(stub_server, inp, tmp_path / "r", "--tpm", "1000")
    assert res.exit_code == 2
    assert re.fullmatch(r"error: --tpm 1000 is smaller than one request \(~\d+ tokens\); raise --tpm\n", res.stderr)
    assert res.stdout == ""
    assert stub_server.count() == 0
    again = run(stub_server, inp, tmp_path / "r", "--tpm", "100000")  # the run resumes with a larger cap
    assert again.exit_code == 0, again.stderr
    assert stub_server.count() == 3
