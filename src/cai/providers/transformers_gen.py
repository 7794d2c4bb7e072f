"""The decoding loop of the `transformers` provider: one sequence at a time, with a KV cache, on CPU.

Sampling is seeded with a `torch.Generator` of its own (the global RNG is never touched): the same checkpoint, prompt
and settings give the same tokens on the same machine. Temperature 0 is greedy (argmax). Above 0 the logits are
divided by the temperature and, where the checkpoint's `generation_config.json` sets them, cut to its `top_k` and
`top_p` (what `model.generate` would do with sampling on). The top log-probabilities of each position are those of
the model's own distribution (the logits before temperature), as an OpenAI-compatible server reports them.

Imported only by `cai.providers.transformers_hf` once torch is known to be installed.
"""

from __future__ import annotations

import functools
import inspect
import secrets
from dataclasses import dataclass, field
from typing import Any

import torch

PIECE_CONTEXT = 4  # tokens decoded before a token to read its text (a leading space, a byte of a character)


@dataclass(frozen=True)
class Sampling:
    """How one request samples: `temperature` 0 is greedy; `top_k` / `top_p` None are off."""

    temperature: float
    seed: int | None
    top_k: int | None = None
    top_p: float | None = None


@dataclass
class Decoded:
    """The tokens generated (end-of-sequence excluded), why decoding stopped, and each position's top entries."""

    tokens: list[int] = field(default_factory=list)
    finish_reason: str = "length"
    top: list[list[tuple[int, float]]] = field(default_factory=list)


def _filtered(logits: torch.Tensor, s: Sampling) -> torch.Tensor:
    """Logits divided by the temperature, with those outside `top_k` / `top_p` set to -inf."""
    x = logits / s.temperature
    if s.top_k and 0 < s.top_k < x.shape[-1]:
        kth = torch.topk(x, s.top_k).values[-1]
        x = x.masked_fill(x < kth, float("-inf"))
    if s.top_p is not None and 0.0 < s.top_p < 1.0:
        ordered, index = torch.sort(x, descending=True)
        probs = torch.softmax(ordered, dim=-1)
        drop = probs.cumsum(dim=-1) - probs >= s.top_p  # the mass before a token already reaches top_p
        x = x.masked_fill(torch.zeros_like(drop).scatter(0, index, drop), float("-inf"))
    return x


def _next_token(logits: torch.Tensor, s: Sampling, gen: torch.Generator) -> int:
    if s.temperature == 0.0:
        return int(torch.argmax(logits))
    probs = torch.softmax(_filtered(logits, s), dim=-1)
    return int(torch.multinomial(probs, 1, generator=gen))


def _top(logits: torch.Tensor, k: int) -> list[tuple[int, float]]:
    lp = torch.log_softmax(logits, dim=-1)
    values, index = torch.topk(lp, min(k, lp.shape[-1]))
    return [(int(i), float(v)) for i, v in zip(index.tolist(), values.tolist())]


@functools.cache
def _forward_names(cls: type) -> tuple[str, str | None]:
    """What `cls.forward` calls its KV cache (`cache` from transformers 5.x, `past_key_values` before) and its
    argument that computes only the last positions' logits (`logits_to_keep`, `num_logits_to_keep`; None: none)."""
    params = inspect.signature(cls.forward).parameters
    cache = "cache" if "cache" in params else "past_key_values"
    keep = next((k for k in ("logits_to_keep", "num_logits_to_keep") if k in params), None)
    return cache, keep


class Decoder:
    """One sequence being decoded: the model's KV cache, the logits at its end and the request's seeded generator.
    Call it under `torch.inference_mode()`."""

    def __init__(self, model: Any, prompt: list[int], s: Sampling) -> None:
        self.model, self.s = model, s
        self.gen = torch.Generator(device="cpu")
        self.gen.manual_seed(s.seed if s.seed is not None else secrets.randbits(63))
        self.cache_name, self.keep = _forward_names(type(model))
        self.cache: Any = None
        self.logits = self.feed(prompt)[-1]

    def feed(self, ids: list[int], every: bool = False) -> torch.Tensor:
        """Run `ids` through the model after what it has seen; the logits at the last position (at each with
        `every`), which become the next token's."""
        kwargs: dict[str, Any] = {self.cache_name: self.cache, "use_cache": True}
        if self.keep and not every:
            kwargs[self.keep] = 1
        res = self.model(input_ids=torch.tensor([ids], dtype=torch.long), **kwargs)
        self.cache = getattr(res, self.cache_name)
        logits = res.logits[0].float()
        self.logits = logits[-1]
        return logits

    def sample(self) -> int:
        """The next token (not fed yet): greedy at temperature 0, else sampled with the request's generator."""
        return _next_token(self.logits, self.s, self.gen)

    def score(self, ids: list[int]) -> float:
        """log P(`ids` come next), leaving the sequence as it was (the cache is cropped back)."""
        total = float(torch.log_softmax(self.logits, dim=-1)[ids[0]])
        if len(ids) > 1:
            before = self.logits
            lp = torch.log_softmax(self.feed(ids[:-1], every=True), dim=-1)
            total += float(sum(lp[i, t] for i, t in enumerate(ids[1:])))
            self.cache.crop(-(len(ids) - 1))
            self.logits = before
        return total

    def choose(self, options: list[list[int]]) -> int:
        """The index of the option to continue with: the likeliest at temperature 0, else sampled by likelihood."""
        scores = torch.tensor([self.score(o) for o in options])
        if self.s.temperature == 0.0:
            return int(torch.argmax(scores))
        return int(torch.multinomial(torch.softmax(scores / self.s.temperature, dim=-1), 1, generator=self.gen))


def decode(model: Any, prompt: list[int], steps: int, stop: set[int], s: Sampling,
           top_logprobs: int | None) -> Decoded:
    """Generate up to `steps` tokens after `prompt`; stop at a token of `stop` (not kept). With `top_logprobs`,
    each sampled position's top entries as (token id, logprob), the position that ended the reply included."""
    out = Decoded()
    with torch.inference_mode():
        dec = Decoder(model, prompt, s)
        for i in range(steps):
            if top_logprobs:
                out.top.append(_top(dec.logits, top_logprobs))
            tok = dec.sample()
            if tok in stop:
                out.finish_reason = "stop"
                break
            out.tokens.append(tok)
            if i + 1 < steps:
                dec.feed([tok])
    return out


def piece(tokenizer: Any, before: list[int], token: int) -> str:
    """The text `token` adds after the tokens `before` (decoded with them, so a leading space or a character split
    across byte tokens reads as it does in the reply); the token alone where that is not a plain extension."""
    context = before[-PIECE_CONTEXT:]
    base = tokenizer.decode(context, skip_special_tokens=False)
    full = tokenizer.decode([*context, token], skip_special_tokens=False)
    return full[len(base):] if full.startswith(base) else tokenizer.decode([token], skip_special_tokens=False)


def top_texts(tokenizer: Any, prompt: list[int], out: Decoded) -> list[list[tuple[str, float]]]:
    """Each position's top entries as (token text, logprob): one position per generated token, and at least one
    (a reply that ended at once still has the position that ended it)."""
    rows = out.top[:max(1, len(out.tokens))]
    seq = [*prompt, *out.tokens]
    n = len(prompt)
    return [[(piece(tokenizer, seq[max(0, n + i - PIECE_CONTEXT):n + i], t), lp) for t, lp in row]
            for i, row in enumerate(rows)]
