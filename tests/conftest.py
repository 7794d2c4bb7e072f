"""Shared fixtures: loopback servers that the real openai / anthropic SDKs talk to (no SDK patching)."""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

TESTS_DIR = Path(__file__).resolve().parent
if str(TESTS_DIR) not in sys.path:  # so tests can `from servers import StubServer`
    sys.path.insert(0, str(TESTS_DIR))
_SRC = TESTS_DIR.parent / "src"
if importlib.util.find_spec("cai") is None and _SRC.is_dir():  # not installed: use the checkout
    sys.path.insert(0, str(_SRC))

from servers import EmbeddedAnthropicServer, StubServer, gguf_path  # noqa: E402

# How long a server may take to start answering: generous, since a loaded 2-core machine can take a minute
# just to import and load the model. Only a server that never comes up reaches it.
SERVER_START_S = 300.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def stub_server() -> Iterator[StubServer]:
    """A started StubServer (latency 0, 12-word replies); `.url` for OpenAI, `.anthropic_url` for Anthropic."""
    with StubServer() as srv:
        yield srv


@pytest.fixture
def batch_server():
    """A started BatchServer (tests/batch_servers.py): a StubServer that also serves the OpenAI Files + Batches
    and Anthropic Message Batches APIs; batches move only when the test calls `advance` / `finish_all` / `expire`."""
    from batch_servers import BatchServer

    with BatchServer() as srv:
        yield srv


def _has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


@pytest.fixture(scope="session", autouse=True)
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """cai's cache folder (requantized models, the embedded model as a checkpoint) for this session, not the
    user's (child processes inherit it): `CAI_TEST_CACHE_DIR` where set (`.ci/run` keeps one between runs; every
    entry is checksummed and made again when damaged), else a new temporary folder."""
    if kept := os.environ.get("CAI_TEST_CACHE_DIR"):
        folder = Path(kept)
        folder.mkdir(parents=True, exist_ok=True)
    else:
        folder = tmp_path_factory.mktemp("cai-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CAI_CACHE_DIR", str(folder))
        yield folder


def servable_gguf(model: Path, folder: Path) -> Path:
    """`model`, or where llama.cpp would hand its tensors to its AMX kernels, which crash on the CPUs measured
    (docs/local.md; `llama_cpp.server` cannot turn them off as cai does), a copy with every tensor in Q5_0, a type
    those kernels leave alone."""
    import logging

    import llama_cpp

    from cai.providers.local import extra_buffer_types

    if extra_buffer_types():
        return model
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype, params.allow_requantize, params.pure = llama_cpp.LLAMA_FTYPE_MOSTLY_Q5_0, True, True
    out = folder / f"{model.stem}.pure-q5_0.gguf"
    logging.getLogger("llama-cpp-python").setLevel(logging.CRITICAL + 1)  # llama.cpp logs every tensor otherwise
    if llama_cpp.llama_model_quantize(str(model).encode(), str(out).encode(), params) != 0:
        pytest.fail(f"could not requantize {model} to Q5_0 for llama_cpp.server")
    return out


@pytest.fixture(scope="session")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`python -m llama_cpp.server` on the embedded GGUF (`servable_gguf`; logits_all, n_ctx 2048); yields its OpenAI
    base URL."""
    missing = [m for m in ("llama_cpp.server", "uvicorn", "fastapi", "sse_starlette", "starlette_context",
                           "pydantic_settings") if not _has_module(m)]
    if missing:
        pytest.skip(f"llama_cpp.server is not importable (missing: {', '.join(missing)}); "
                    "pip install 'llama-cpp-python[server]'")
    model = servable_gguf(gguf_path(), tmp_path_factory.mktemp("served"))
    port = free_port()
    log = tempfile.NamedTemporaryFile(prefix="llama-server-", suffix=".log", delete=False)
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--host", "127.0.0.1",
           "--port", str(port), "--n_ctx", "2048", "--logits_all", "true"]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    base = f"http://127.0.0.1:{port}/v1"

    def log_tail() -> str:
        log.flush()
        try:
            return Path(log.name).read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"llama_cpp.server exited with {proc.returncode}; log {log.name}:\n{log_tail()}")
            try:
                with urllib.request.urlopen(base + "/models", timeout=2) as r:
                    if r.status == 200 and json.loads(r.read()).get("data") is not None:
                        break
            except (urllib.error.URLError, OSError, ValueError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"llama_cpp.server did not answer on {base} within {SERVER_START_S:g} s; "
                            f"log {log.name}:\n{log_tail()}")
            time.sleep(0.25)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()


@pytest.fixture(scope="session")
def anthropic_embedded() -> Iterator[EmbeddedAnthropicServer]:
    """An EmbeddedAnthropicServer (SmolLM2 via llama_cpp); `.anthropic_url` is the Anthropic SDK base_url."""
    if not _has_module("llama_cpp"):
        pytest.skip("llama_cpp (llama-cpp-python) is not installed")
    with EmbeddedAnthropicServer() as srv:
        yield srv
