"""Generation settings and the cache key made only of what changes a model's output."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

Message = dict[str, str]  # one chat message: {"role": ..., "content": ...}
_SURROGATE = re.compile("[\ud800-\udfff]")


def chat_turns(messages: Iterable[Message]) -> list[Message]:
    """Each message's role and content as a local model's chat template gets them: `developer` turns as `system`
    (templates know only system, user and assistant)."""
    return [{"role": "system" if m["role"] == "developer" else m["role"], "content": m["content"]} for m in messages]


def storable(text: str) -> str:
    """`text` with lone surrogates (which no UTF-8 file or SQLite text can hold) replaced by U+FFFD."""
    return _SURROGATE.sub("\ufffd", text)


class Output:
    """Marks a settings field that changes what the models produce: `rounds: Annotated[int, OUTPUT] = 2`.
    The resume fingerprint is derived from the marked fields (see `output_settings`), never listed by hand."""

    def __repr__(self) -> str:
        return "OUTPUT"


OUTPUT = Output()


def _marked(info: Any) -> bool:
    return any(isinstance(m, Output) for m in info.metadata)


def _settings_class(annotation: Any) -> type[BaseModel] | None:
    """The settings model in a field's annotation (`X` or `X | None`), if any."""
    for t in (annotation, *getattr(annotation, "__args__", ())):
        if isinstance(t, type) and issubclass(t, BaseModel):
            return t
    return None


def _merge(out: dict[str, Any], part: dict[str, Any]) -> None:
    clash = out.keys() & part.keys()
    if clash:  # the fingerprint is flat: two output fields of one name would hide each other
        raise TypeError(f"output-affecting settings share a name: {', '.join(sorted(clash))}")
    out.update(part)


def output_settings(model: BaseModel) -> dict[str, Any]:
    """{name: value} of `model`'s fields marked OUTPUT, of every nested settings model's marked fields, and
    of the `output_fields()` of those that define it (GenConfig's max_tokens, temperature, seed, ...).
    Flat: names are unique across the tree (TypeError otherwise), so fingerprints of older runs compare."""
    out: dict[str, Any] = {}
    for name, info in type(model).model_fields.items():
        value = getattr(model, name)
        if _marked(info):
            _merge(out, {name: value})
        elif isinstance(value, BaseModel):
            _merge(out, value.output_fields() if hasattr(value, "output_fields") else output_settings(value))
    return out


def output_defaults(cls: type[BaseModel]) -> dict[str, Any]:
    """The defaults of what `output_settings` returns for a `cls` instance (fields added later compare equal
    to a fingerprint without them only while they keep their default)."""
    out: dict[str, Any] = {}
    for name, info in cls.model_fields.items():
        if _marked(info):
            out[name] = info.get_default(call_default_factory=True)
            continue
        default = info.get_default(call_default_factory=True)
        if isinstance(default, BaseModel) and hasattr(default, "output_fields"):
            out.update(default.output_fields())
        elif (sub := _settings_class(info.annotation)) is not None:
            out.update(output_defaults(sub))
    return out


class GenConfig(BaseModel):
    """Settings for one model call. `timeout` does not change the output, so it is not in the key."""

    model_config = ConfigDict(frozen=True)

    max_tokens: int = Field(256, ge=1)
    temperature: float = Field(0.7, ge=0.0, le=2.0)
    seed: int | None = 0
    top_logprobs: int | None = Field(None, ge=0, le=20)
    timeout: float = Field(120.0, gt=0)

    def output_fields(self) -> dict[str, Any]:
        """Every field but `timeout`: a new field changes the cache key and the resume fingerprint by itself."""
        return self.model_dump(exclude={"timeout"})


class Request(BaseModel):
    """One model call: messages, settings and, optionally, a JSON schema the reply must follow."""

    model_config = ConfigDict(frozen=True)

    messages: tuple[dict[str, str], ...]
    config: GenConfig = GenConfig()
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    schema_name: str = "reply"
    # How many leading messages (system turns included) are the same for every record, e.g. the critic's
    # instructions and few-shot turns: a provider may ask its server to cache them (Anthropic prompt caching).
    # A transport hint only: not part of the cache key, and never changes what a provider sends as text.
    static_prefix: int = Field(0, ge=0)

    @property
    def schema(self) -> dict[str, Any] | None:
        return self.schema_


class Completion(BaseModel):
    """What a provider returns. `top_logprobs[i]` lists (token, logprob) for generated token i.

    `tokens_in` counts every prompt token; `tokens_cached` of them were read from the provider's prompt cache
    and `tokens_cache_write` written to it (both parts of `tokens_in`). `batch`: the call went through a
    provider's batch API (priced at the batch price)."""

    text: str
    tokens_in: int = 0
    tokens_out: int = 0
    tokens_cached: int = 0
    tokens_cache_write: int = 0
    batch: bool = False
    finish_reason: str | None = None
    top_logprobs: list[list[tuple[str, float]]] | None = None
    structured: str | None = None  # how a schema was enforced: json_schema, json_object, tool, grammar, prompt

    @field_validator("text")
    @classmethod
    def _storable_text(cls, v: str) -> str:
        return storable(v)

    @field_validator("top_logprobs")
    @classmethod
    def _storable_tokens(cls, v: list[list[tuple[str, float]]] | None) -> list[list[tuple[str, float]]] | None:
        return None if v is None else [[(storable(t), lp) for t, lp in pos] for pos in v]


def cache_key(identity: dict[str, Any], request: Request) -> str:
    """sha256 over provider identity, messages, output-affecting settings and schema."""
    payload = {
        "model": identity,
        "messages": list(request.messages),
        "config": request.config.output_fields(),
        "schema": request.schema,
    }
    blob = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def prompt_text(messages: list[dict[str, str]]) -> str:
    """The last user turn's text (what a person reads as "the prompt")."""
    return next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
