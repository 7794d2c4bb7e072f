"""One sequence's generation for the batched local engine, done the way `Llama.create_chat_completion` does it.

`plan` runs llama-cpp-python's own chat handler (chat template, tokenization, stop strings, the grammar of a
`json_object` response format, its default sampling settings) against a stand-in whose `create_completion`
records its arguments instead of generating. `Generation` then builds the same sampler chain as
`Llama._init_sampler` and applies `Llama._create_completion`'s rules to each sampled token (end-of-generation
tokens, stop strings, the multi-byte UTF-8 hold-back, max_tokens cut to the context window), so a sequence
decoded in a batch samples from the same chain, with the same seed, as the single-sequence path.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import llama_cpp
import numpy as np

_UNSUPPORTED = ("logit_bias", "logprobs")


class _Captured(Exception):  # noqa: N818 - control flow, not an error
    def __init__(self, kwargs: dict[str, Any]) -> None:
        super().__init__("captured")
        self.kwargs = kwargs


class _Recorder:
    """Stands in for a `Llama` inside `create_chat_completion`: everything is the real instance's except
    `create_completion`, which raises with its arguments."""

    def __init__(self, llm: Any) -> None:
        self._llm = llm

    def __getattr__(self, name: str) -> Any:
        return getattr(self._llm, name)

    def create_completion(self, **kwargs: Any) -> Any:
        raise _Captured(kwargs)


def plan(llm: Any, messages: list[dict[str, str]], **kwargs: Any) -> dict[str, Any]:
    """The arguments `llm.create_chat_completion(messages=..., **kwargs)` would pass to `create_completion`:
    `prompt` (token ids), `stop`, `grammar`, `seed`, `max_tokens` and the sampling settings."""
    try:
        llama_cpp.Llama.create_chat_completion(_Recorder(llm), messages=messages, **kwargs)  # type: ignore[arg-type]
    except _Captured as c:
        out = c.kwargs
    else:  # pragma: no cover - a chat handler that never calls create_completion
        raise RuntimeError("the chat handler did not call create_completion")
    for name in _UNSUPPORTED:
        if out.get(name):
            raise ValueError(f"the batched local engine does not support {name}")
    if out.get("mirostat_mode"):
        raise ValueError("the batched local engine does not support mirostat")
    return out


def _seed(llm: Any, seed: int | None) -> int:
    """`_create_completion`'s seed: the given one, else one drawn from the instance's current seed."""
    return seed if seed is not None else random.Random(llm._seed).randint(0, 2**32)


def make_sampler(llm: Any, args: dict[str, Any]) -> Any:
    """The sampler chain `Llama._init_sampler` builds for these arguments (penalties, grammar, greedy or
    top-k/typical/top-p/min-p/temperature/dist with the call's seed), for one sequence of a batch."""
    stand_in = SimpleNamespace(_seed=_seed(llm, args.get("seed")), _n_vocab=llm._n_vocab,
                               last_n_tokens_size=llm.last_n_tokens_size, _model=llm._model,
                               _input_ids=llm._input_ids)
    return llama_cpp.Llama._init_sampler(
        stand_in,  # type: ignore[arg-type]
        top_k=args["top_k"], top_p=args["top_p"], min_p=args["min_p"], typical_p=args["typical_p"],
        temp=args["temperature"], repeat_penalty=args["repeat_penalty"],
        frequency_penalty=args["frequency_penalty"], presence_penalty=args["presence_penalty"],
        tfs_z=args["tfs_z"], logits_processor=args.get("logits_processor"), grammar=args.get("grammar"))


@dataclass
class Generation:
    """The state of one call between decode steps: its prompt, sampled tokens and when to stop."""

    llm: Any
    prompt: list[int]
    max_tokens: int
    stop: list[bytes]
    criteria: Any = None  # the chat format's stopping criteria (the template's: the last token fed is EOS)
    completion: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    text: bytes = b""
    _multibyte_fix: int = 0

    @classmethod
    def from_plan(cls, llm: Any, args: dict[str, Any], n_ctx: int) -> Generation:
        """Check the prompt against the per-sequence window `n_ctx` as `_create_completion` does."""
        prompt = list(args["prompt"])
        if len(prompt) >= n_ctx:
            raise ValueError(f"Requested tokens ({len(prompt)}) exceed context window of {n_ctx}")
        max_tokens = args.get("max_tokens")
        if max_tokens is None or max_tokens <= 0:
            max_tokens = n_ctx - len(prompt)
        max_tokens = max_tokens if max_tokens + len(prompt) < n_ctx else n_ctx - len(prompt)
        stop = args.get("stop") or []
        stop = [stop] if isinstance(stop, str) else stop
        return cls(llm=llm, prompt=prompt, max_tokens=max_tokens, stop=[s.encode("utf-8") for s in stop],
                   criteria=args.get("stopping_criteria"))

    def _detok(self, tokens: list[int]) -> bytes:
        return bytes(self.llm.detokenize(tokens, prev_tokens=self.prompt))

    def push(self, token: int, fed: list[int]) -> bool:
        """Take one token sampled after the tokens `fed` (prompt and completion so far, as in the KV cache);
        True once the sequence is finished (`finish_reason` and `text` set)."""
        if self.criteria is not None and self.criteria(np.asarray(fed, dtype=np.intc), None):
            return self._finish(self._detok(self.completion), "stop")
        if llama_cpp.llama_vocab_is_eog(self.llm._model.vocab, token):
            return self._finish(self._detok(self.completion), "stop")
        self.completion.append(token)
        all_text = self._detok(self.completion)
        for k, char in enumerate(all_text[-3:]):
            k = 3 - k
            for num, pattern in ((2, 192), (3, 224), (4, 240)):
                if num > k and pattern & char == pattern:
                    self._multibyte_fix = num - k
        if self._multibyte_fix > 0:  # an incomplete character: no stop check, no length check (as upstream)
            self._multibyte_fix -= 1
            return False
        hits = [s for s in self.stop if s in all_text]
        if hits:
            return self._finish(all_text[: all_text.index(hits[0])], "stop")
        if len(self.completion) >= self.max_tokens:
            return self._finish(self._detok(self.completion), "length")
        return False

    def _finish(self, text: bytes, reason: str) -> bool:
        self.text, self.finish_reason = text, reason
        return True

    def result(self) -> dict[str, Any]:
        """The parts of a `create_chat_completion` reply that the provider reads."""
        return {"choices": [{"message": {"role": "assistant", "content": self.text.decode("utf-8", errors="ignore")},
                             "finish_reason": self.finish_reason}],
                "usage": {"prompt_tokens": len(self.prompt), "completion_tokens": len(self.completion),
                          "total_tokens": len(self.prompt) + len(self.completion)}}
