"""`transformers:PATH`: a Hugging Face checkpoint folder (config, weights, tokenizer with a chat template) run in this
process on CPU with transformers, e.g. a policy trained on cai's exports (docs/training.md).

The model is loaded once per process per folder (again after the folder's files change), in float32, and its calls
run one at a time, in the order they were made, on one worker thread per folder. The request's messages go through
the tokenizer's chat template (`developer` turns as `system`, as the `local` provider sends them; a template that
refuses a system turn gets it folded into the first user turn). Decoding is `cai.providers.transformers_gen`: seeded,
greedy at temperature 0, top log-probabilities per generated token. A JSON schema is in the prompt and, for the flat
object schemas cai asks with, the reply is written to it (`cai.providers.transformers_json`: the model gives the
values; `structured="grammar"`, as the local provider's grammar); any other schema is asked for in the prompt alone
(`structured="prompt"`) and the reply parsed as from any model.

A model is named by the content of its files (`identity`): a retrained folder is a new model to the call cache and
the resume check. torch and transformers come with the `train` extra and are imported only when a model is built.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib.util
import json
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cai.calls import Completion, Message, Request, chat_turns
from cai.errors import InputError, RequestRejected, one_line
from cai.providers.base import Model, schema_instruction
from cai.providers.local_weights import file_sha256

MISSING_EXTRA = "the transformers provider needs the 'train' extra: pip install 'cai[train]'"
USAGE = "transformers:PATH takes a Hugging Face model folder (config.json, weights, tokenizer)"
WEIGHTS = ("*.safetensors", "pytorch_model*.bin", "*.index.json")
# The files that decide what the model says: hashed into its identity (training state, READMEs and the rest are not).
DEFINING = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
            "special_tokens_map.json", "added_tokens.json", "tokenizer.model", "vocab.json", "vocab.txt", "merges.txt",
            "chat_template.jinja", "chat_template.json", *WEIGHTS)
_lock = threading.Lock()
_loaded: dict[str, tuple[str, Loaded]] = {}  # folder → (sha256 of its files, the model)
_workers: dict[str, ThreadPoolExecutor] = {}


def require_runtime() -> None:
    """InputError naming the `train` extra if torch or transformers is not installed (nothing is imported)."""
    for module in ("torch", "transformers"):
        if importlib.util.find_spec(module) is None:
            raise InputError(f"{MISSING_EXTRA} ({module} is not installed)")


def model_folder(name: str) -> Path:
    """The checkpoint folder `transformers:NAME` asks for; InputError if it is missing or not a model folder."""
    path = Path(name).expanduser()
    if not path.exists():
        raise InputError(f"no such folder; {USAGE}", path=name)
    if not path.is_dir():
        hint = " (a GGUF file runs with local:PATH)" if path.suffix.lower() == ".gguf" else ""
        raise InputError(f"not a folder; {USAGE}{hint}", path=name)
    if not (path / "config.json").is_file():
        raise InputError("not a Hugging Face model folder: no config.json", path=name)
    if not any(any(path.glob(g)) for g in WEIGHTS[:2]):
        raise InputError("not a Hugging Face model folder: no weights (*.safetensors or pytorch_model*.bin)",
                         path=name)
    if not any((path / f).is_file() for f in ("tokenizer.json", "tokenizer.model", "vocab.json")):
        raise InputError("no tokenizer in the model folder (tokenizer.json, tokenizer.model or vocab.json)", path=name)
    return path.resolve()


def folder_sha256(folder: Path) -> str:
    """sha256 over the names and sha256 of the files that define the model (`DEFINING`), in name order."""
    files = sorted({p for g in DEFINING for p in folder.glob(g) if p.is_file()})
    h = hashlib.sha256()
    for p in files:
        h.update(f"{p.name}\0{file_sha256(p)}\n".encode())
    return h.hexdigest()


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """transformers' warnings and loading progress bars off for a while (cai prints its own one-line errors)."""
    from transformers.utils import logging as tlog

    level, bars = tlog.get_verbosity(), tlog.is_progress_bar_enabled()
    tlog.set_verbosity_error()
    tlog.disable_progress_bar()
    try:
        yield
    finally:
        tlog.set_verbosity(level)
        if bars:
            tlog.enable_progress_bar()


def _reason(e: Exception) -> str:
    return f"{type(e).__name__}: {one_line(str(e))[:300]}"


def load_tokenizer(folder: Path) -> Any:
    """The folder's tokenizer; InputError if it cannot be loaded or has no chat template."""
    require_runtime()
    from transformers import AutoTokenizer

    try:
        with _quiet_transformers():
            tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception as e:  # whatever the folder's files make the loader raise (OSError, ValueError, ...)
        raise InputError(f"transformers cannot load the tokenizer: {_reason(e)}", path=str(folder)) from e
    if not getattr(tok, "chat_template", None):
        raise InputError("the tokenizer has no chat template (chat_template in tokenizer_config.json or "
                         "chat_template.jinja): cai sends chat messages", path=str(folder))
    return tok


@dataclass
class Loaded:
    """A checkpoint in memory: the model, its tokenizer, the tokens that end a reply, its context length and the
    sampling cut-offs of its generation config."""

    model: Any
    tokenizer: Any
    stop: set[int]
    n_ctx: int | None
    top_k: int | None
    top_p: float | None


def _ids(value: Any) -> set[int]:
    return {int(v) for v in (value if isinstance(value, (list, tuple)) else [value]) if v is not None}


def load(folder: Path, sha256: str) -> Loaded:
    """The process-wide model of `folder` as its files are now (`sha256`, `folder_sha256`): loaded on first use,
    and again once the folder was trained again (the older copy let go); InputError if transformers cannot load it."""
    with _lock:
        held = _loaded.get(str(folder))
        if held is None or held[0] != sha256:
            _loaded.pop(str(folder), None)
            _loaded[str(folder)] = (sha256, _load(folder))
        return _loaded[str(folder)][1]


def _load(folder: Path) -> Loaded:
    tok = load_tokenizer(folder)
    import torch
    from transformers import AutoModelForCausalLM

    try:
        with _quiet_transformers():
            model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32, local_files_only=True)
    except Exception as e:  # whatever the folder's files make the loader raise (safetensors' own errors too)
        raise InputError(f"transformers cannot load this model: {_reason(e)}", path=str(folder)) from e
    model.eval()
    cfg, gen = model.config, model.generation_config
    stop = _ids(getattr(gen, "eos_token_id", None)) | _ids(tok.eos_token_id)
    n_ctx = getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)
    return Loaded(model, tok, stop, n_ctx, getattr(gen, "top_k", None), getattr(gen, "top_p", None))


def _worker(key: str) -> ThreadPoolExecutor:
    with _lock:
        if key not in _workers:
            _workers[key] = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cai-transformers")
        return _workers[key]


def chat_messages(request: Request) -> list[Message]:
    """The request's messages as the chat template gets them: `developer` as `system`, and with a schema its
    instruction at the end of the first system turn (a system turn of its own if there is none)."""
    msgs = chat_turns(request.messages)
    if request.schema is not None:
        note = schema_instruction(request.schema)
        if msgs and msgs[0]["role"] == "system":
            msgs[0] = {"role": "system", "content": f"{msgs[0]['content']}\n\n{note}"}
        else:
            msgs.insert(0, {"role": "system", "content": note})
    return msgs


def _fold_system(msgs: list[Message]) -> list[Message]:
    """System turns folded into the next user turn, for a template that has no system role."""
    out: list[Message] = []
    pending: list[str] = []
    for m in msgs:
        if m["role"] == "system":
            pending.append(m["content"])
        elif m["role"] == "user" and pending:
            out.append({"role": "user", "content": "\n\n".join([*pending, m["content"]])})
            pending = []
        else:
            out.append(m)
    return out + [{"role": "user", "content": "\n\n".join(pending)}] if pending else out


def prompt_ids(tokenizer: Any, msgs: list[Message]) -> list[int]:
    """The prompt's token ids: the chat template (with the assistant's turn opened) applied, then tokenized."""
    from jinja2 import TemplateError

    try:
        text = tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    except TemplateError:
        text = tokenizer.apply_chat_template(_fold_system(msgs), add_generation_prompt=True, tokenize=False)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


class ChatTokens:
    """Prompt tokens as the checkpoint counts them (its chat template and tokenizer; no weights loaded)."""

    method = "exact: the checkpoint's own chat template and tokenizer"

    def __init__(self, folder: Path) -> None:
        self.tokenizer = load_tokenizer(folder)

    def count(self, request: Request) -> int:
        return len(prompt_ids(self.tokenizer, chat_messages(request)))

    def filler(self, tokens: int) -> str:
        return " the" * tokens


class TransformersModel(Model):
    provider = "transformers"
    supports_logprobs = True

    def __init__(self, name: str, base_url: str | None = None) -> None:
        require_runtime()
        self.folder = model_folder(name)
        self._sha256: str | None = None
        super().__init__(name, None)

    @property
    def sha256(self) -> str:
        if self._sha256 is None:
            self._sha256 = folder_sha256(self.folder)
        return self._sha256

    def identity(self) -> dict[str, Any]:
        """The content of the files that define the model: a copied folder is the same model, a retrained one not."""
        return {"provider": self.provider, "sha256": self.sha256}

    def model_file(self) -> dict[str, Any]:
        return {"file": self.folder.name, "sha256": self.sha256}

    def check(self) -> None:
        load(self.folder, self.sha256)

    @classmethod
    def token_counter(cls, name: str) -> ChatTokens:
        require_runtime()
        return ChatTokens(model_folder(name))

    async def complete(self, request: Request) -> Completion:
        key = str(self.folder)
        return await asyncio.get_running_loop().run_in_executor(_worker(key), self._complete, request)

    def _complete(self, request: Request) -> Completion:
        import torch

        from cai.providers import transformers_gen as tg
        from cai.providers import transformers_json as tj

        m = load(self.folder, self.sha256)
        cfg = request.config
        prompt = prompt_ids(m.tokenizer, chat_messages(request))
        room = cfg.max_tokens if m.n_ctx is None else min(cfg.max_tokens, m.n_ctx - len(prompt))
        if room < 1:
            raise RequestRejected(f"transformers model rejected the request: a prompt of {len(prompt)} tokens "
                                  f"leaves no room in its context of {m.n_ctx}", provider=self.provider,
                                  model=self.folder.name)
        sampling = tg.Sampling(cfg.temperature, cfg.seed, m.top_k, m.top_p)
        fields = tj.plan(request.schema) if request.schema is not None else None
        if fields is not None:
            with torch.inference_mode():
                filled = tj.fill(tg.Decoder(m.model, prompt, sampling), m.tokenizer, m.stop, fields, room)
            return Completion(text=json.dumps(filled.value, ensure_ascii=False), tokens_in=len(prompt),
                              tokens_out=filled.tokens, finish_reason="length" if filled.cut else "stop",
                              structured="grammar")
        out = tg.decode(m.model, prompt, room, m.stop, sampling, cfg.top_logprobs)
        return Completion(text=m.tokenizer.decode(out.tokens, skip_special_tokens=True),
                          tokens_in=len(prompt), tokens_out=len(out.tokens), finish_reason=out.finish_reason,
                          top_logprobs=tg.top_texts(m.tokenizer, prompt, out) if cfg.top_logprobs else None,
                          structured="prompt" if request.schema is not None else None)
