"""Base URLs (issue 33): credentials written into a base URL reach the endpoint but never a file or a printed
line, and the same endpoint with another key is the same endpoint (call cache, resume); a URL that is not
http(s) and a --tpm no request fits are refused before the run folder exists. Real SDKs, loopback servers."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import shlex
import socket
from pathlib import Path
from urllib.parse import quote, quote_plus

import pytest

import cai
from cai import batch
from cai.calls import GenConfig, Request, cache_key
from cai.errors import ConfigMismatch, InputError
from cai.providers import get_model
from cai.read.cmdline import resume_command
from cai.redact import clean_url, redact
from helpers import cai as cli
from helpers import write_prompts
from reliability import cai_run

KEY = "sk-test-PLANTED/5ecret+key=42"  # the environment's API key; percent-encoding changes it
USER, PASSWORD, QUERY_KEY = "acct-7f3e9d", "pa/ss:w0rd SECRET@1", "QUERY+SECRET/42"
SECRETS = (KEY, USER, PASSWORD, QUERY_KEY)
FAST = ["--rounds", "1", "--max-tokens", "16", "--max-retries", "0", "--quiet"]


@pytest.fixture(autouse=True)
def _keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    for var in ("OPENAI_BASE_URL", "ANTHROPIC_BASE_URL"):
        monkeypatch.delenv(var, raising=False)


def lower_hex(encoded: str) -> str:
    return re.sub(r"%[0-9A-F]{2}", lambda m: m.group().lower(), encoded)


def forms(secret: str) -> set[str]:
    """A secret as written and in each way a URL or a form may encode it."""
    return {secret, quote(secret, safe=""), lower_hex(quote(secret, safe="")), quote_plus(secret), quote(secret)}


def assert_clean(folder: Path, *texts: str) -> None:
    """No form of any secret in `texts` or in any file under `folder` (run.sqlite and its WAL included)."""
    for secret in SECRETS:
        for form in forms(secret):
            for text in texts:
                assert form not in text, (form, text)
            for f in folder.rglob("*"):
                if f.is_file():
                    assert form.encode() not in f.read_bytes(), (form, f)


def secret_url(base: str, password: str = PASSWORD, query_key: str = QUERY_KEY) -> str:
    """`base` with a user and password, a secret query parameter, a harmless one, and the environment's API key
    percent-encoded in another (only the env-key redaction can catch that one)."""
    scheme, rest = base.split("://", 1)
    return (f"{scheme}://{USER}:{quote(password, safe='')}@{rest}?api-key={quote(query_key, safe='')}"
            f"&api-version=2024-10-21&tenant={quote(KEY, safe='')}")


def clean_form(base: str) -> str:
    scheme, rest = base.split("://", 1)
    return f"{scheme}://***@{rest}?api-key=***&api-version=2024-10-21&tenant=***"


def run_cli(inp: Path, out: Path, url: str, provider: str = "openai", *extra: str):
    return cli("run", inp, "--out", out, "--model", f"{provider}:stub", "--base-url", url, *FAST, *extra)


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_url_credentials_reach_the_server_but_no_file_and_no_printed_line(tmp_path, stub_server, provider):
    base = stub_server.url if provider == "openai" else stub_server.anthropic_url
    url = secret_url(base)
    inp = write_prompts(tmp_path / "in.jsonl", ["question number 0?", "question number 1?"])
    stub_server.add_fault("400", times=1, when=lambda path, body: "question number 1?" in json.dumps(body))
    res = cai_run("run", inp, "--out", tmp_path / "run", "--model", f"{provider}:stub", "--base-url", url, *FAST,
                  "--json", env=dict(os.environ))  # a child process: the retry command it prints is its argv
    assert res.returncode == 1, res.stderr  # one record failed: the retry command is printed
    # The SDK got the URL as given: its userinfo as HTTP basic auth, its query on every request.
    basic = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    assert stub_server.requests
    for r in stub_server.requests:
        assert r["headers"]["authorization"] == basic
        assert r["target"].endswith(f"?api-key={quote_plus(QUERY_KEY)}&api-version=2024-10-21"
                                    f"&tenant={quote_plus(KEY)}")
    shown = clean_form(base)
    assert f"--base-url {shlex.quote(shown)}" in res.stderr  # the printed retry command: *** for credentials
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert set(manifest["base_urls"].values()) == {shown} and manifest["settings"]["models"]["base_url"] == shown
    status = cli("status", tmp_path / "run", "--json")
    assert shlex.quote(shown) in json.loads(status.stdout)["resume"]
    assert json.loads(status.stdout)["errors"][0]["message"].startswith(f"HTTP 400 from {shown}")
    report = cli("report", tmp_path / "run")
    assert report.exit_code == 0, report.stderr
    page = (tmp_path / "run" / "report.html").read_text()
    assert f"http://***@127.0.0.1:{stub_server.port}" in page
    assert_clean(tmp_path, res.stdout, res.stderr, status.stdout, status.stderr, report.stderr)


def test_a_dead_endpoint_is_named_without_its_credentials(tmp_path):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    inp = write_prompts(tmp_path / "in.jsonl", ["question number 0?"])
    res = run_cli(inp, tmp_path / "run", secret_url(f"http://127.0.0.1:{port}/v1"))
    assert res.exit_code == 4
    line = res.stderr.strip()
    assert len(line.splitlines()) == 1 and "is unusable" in line
    assert clean_form(f"http://127.0.0.1:{port}/v1") in line
    assert_clean(tmp_path, res.stdout, res.stderr)


def test_the_same_endpoint_with_another_key_is_the_same_cache_and_the_same_run(tmp_path, stub_server):
    one, other = secret_url(stub_server.url), secret_url(stub_server.url, "another-PASSWORD", "another-KEY")
    request = Request(messages=({"role": "user", "content": "hi"},), config=GenConfig(max_tokens=16))
    assert cache_key(get_model("openai:stub", one).identity(), request) == cache_key(
        get_model("openai:stub", other).identity(), request)
    assert get_model("openai:stub", one).identity() != get_model("openai:stub", stub_server.url).identity()

    inp = write_prompts(tmp_path / "in.jsonl", ["question number 0?", "question number 1?"])
    cache = tmp_path / "calls.sqlite"
    first = run_cli(inp, tmp_path / "a", one, "openai", "--cache", cache, "--json")
    assert first.exit_code == 0, first.stderr
    sent = stub_server.count()
    second = run_cli(inp, tmp_path / "b", other, "openai", "--cache", cache, "--json")
    assert second.exit_code == 0, second.stderr
    assert stub_server.count() == sent  # every call answered by the shared cache
    assert json.loads(second.stdout)["this_invocation"]["shared_cache_hits"] == sent
    again = run_cli(inp, tmp_path / "a", other, "openai")  # resuming with the new key: no mismatch, nothing sent
    assert again.exit_code == 0, again.stderr
    assert stub_server.count() == sent


def test_a_batch_job_ticks_with_url_credentials_only_from_the_environment(tmp_path, batch_server, monkeypatch):
    """The job stores its base URL without them, so cron's tick takes the URL from OPENAI_BASE_URL."""
    srv, out, url = batch_server, tmp_path / "job", secret_url(batch_server.url)
    inp = write_prompts(tmp_path / "in.jsonl", ["question number 0?", "question number 1?"])
    batch.submit(inp, out=out, model="openai:stub", base_url=url, rounds=1, max_tokens=16)
    srv.finish_all()
    with pytest.raises(ConfigMismatch, match="set OPENAI_BASE_URL"):
        batch.tick(out)
    monkeypatch.setenv("OPENAI_BASE_URL", url)
    for _ in range(3):
        report = batch.tick(out)
        srv.finish_all()
    assert report.complete and report.manifest["records"]["done"] == 2
    basic = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    assert srv.requests and all(r["headers"]["authorization"] == basic for r in srv.requests)
    assert_clean(tmp_path)


@pytest.mark.parametrize("text", [
    f"HTTP 500 from {secret_url('http://h/v1')}: boom",
    f"key {quote(KEY, safe='')} / {lower_hex(quote(KEY, safe=''))} / {quote_plus(KEY)} / {KEY}",
    f"--base-url={secret_url('https://h')}"])
def test_redact_masks_url_credentials_and_encoded_keys(text):
    assert_clean(Path("/nonexistent"), redact(text))
    assert_clean(Path("/nonexistent"), resume_command(["cai", "run", "in.jsonl", "--base-url", text]))


def test_clean_url_keeps_a_url_without_credentials_as_written():
    for url in ("http://127.0.0.1:8000/v1", "https://x.openai.azure.com/openai?api-version=2024-10-21", "http://h"):
        assert clean_url(url) == url
    assert clean_url(secret_url("http://h/v1")) == clean_form("http://h/v1")


BAD_URLS = ["127.0.0.1:8000/v1", "ftp://127.0.0.1/v1", "garbage", "http:///v1", "http://127.0.0.1:port/v1"]


@pytest.mark.parametrize("command", [["run"], ["batch", "submit"]])
@pytest.mark.parametrize("url", BAD_URLS)
def test_a_base_url_that_is_not_http_is_refused_before_the_run_folder(tmp_path, command, url):
    inp = write_prompts(tmp_path / "in.jsonl", ["question number 0?"])
    res = cli(*command, inp, "--out", tmp_path / "run", "--model", "openai:stub", "--base-url", url)
    assert res.exit_code == 2
    assert len(res.stderr.strip().splitlines()) == 1 and "--base-url" in res.stderr
    assert not (tmp_path / "run").exists()


def test_a_bad_base_url_in_the_library_or_the_environment_is_refused_before_the_run_folder(tmp_path, monkeypatch):
    inp = write_prompts(tmp_path / "in.jsonl", ["question number 0?"])
    with pytest.raises(InputError, match=r"base_url .*'ftp://\*\*\*@h/v1' is not an http"):
        asyncio.run(cai.arun(inp, out=tmp_path / "run", model="openai:stub", base_url="ftp://u:p@h/v1"))
    monkeypatch.setenv("OPENAI_BASE_URL", "localhost:8000/v1")
    with pytest.raises(InputError, match="OPENAI_BASE_URL 'localhost:8000/v1' is not an http"):
        asyncio.run(cai.arun(inp, out=tmp_path / "run", model="openai:stub"))
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("extra", [["--tpm", "1"], ["--tpm", "100", "--max-tokens", "16"]])
def test_a_tpm_no_request_fits_is_refused_before_the_run_folder(tmp_path, stub_server, extra):
    """--tpm 100 fits a draft of 16 tokens but no critique (its instructions alone are more): no draft is paid."""
    inp = write_prompts(tmp_path / "in.jsonl", ["question number 0?"])
    res = cli("run", inp, "--out", tmp_path / "run", "--model", "openai:stub", "--base-url", stub_server.url,
              "--rounds", "1", *extra)
    assert res.exit_code == 2
    assert len(res.stderr.strip().splitlines()) == 1 and "--tpm" in res.stderr
    assert not (tmp_path / "run").exists() and stub_server.count() == 0
    with pytest.raises(InputError, match="tpm"):
        asyncio.run(cai.arun(inp, out=tmp_path / "run", model="openai:stub", base_url=stub_server.url, tpm=1))
    assert not (tmp_path / "run").exists()
