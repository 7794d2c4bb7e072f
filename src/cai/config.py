"""Generation settings and the cache key made only of what changes a model's output."""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

Message = dict[str, str]
_SURROGATE = re.compile("[\ud800-\udfff]")


def storable(text: str) -> str:
    """`text` with lone surrogates (which no UTF-8 file or SQLite text can hold) replaced by U+FFFD."""
    return _SURROGATE.sub("\ufffd", text)


class Output:
    """Marks a settings field that changes what the models produce: `rounds: Annotated[int, OUTPUT] = 2`.
    The resume fingerprint is derived from the marked fields (see `output_settings`), never listed by hand."""

    def __repr__(self) -> str:
        return "OUTPUT"


OUTPUT = Output()


def output_settings(model: BaseModel) -> dict[str, Any]:
    """{name: value} of `model`'s fields marked OUTPUT, and of every nested settings model's `output_fields()`
    (flattened, e.g. GenConfig's max_tokens, temperature, seed, top_logprobs)."""
    out: dict[str, Any] = {}
    for name, info in type(model).model_fields.items():
        value = getattr(model, name)
        if any(isinstance(m, Output) for m in info.metadata):
            out[name] = value
        elif isinstance(value, BaseModel) and hasattr(value, "output_fields"):
            out.update(value.output_fields())
    return out


def output_defaults(cls: type[BaseModel]) -> dict[str, Any]:
    """The defaults of what `output_settings` returns for a `cls` instance (fields added later compare equal
    to a fingerprint without them only while they keep their default)."""
    out: dict[str, Any] = {}
    for name, info in cls.model_fields.items():
        if any(isinstance(m, Output) for m in info.metadata):
            out[name] = info.get_default(call_default_factory=True)
        else:
            default = info.get_default(call_default_factory=True)
            if isinstance(default, BaseModel) and hasattr(default, "output_fields"):
                out.update(default.output_fields())
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

    @property
    def schema(self) -> dict[str, Any] | None:
        return self.schema_


class Completion(BaseModel):
    """What a provider returns. `top_logprobs[i]` lists (token, logprob) for generated token i."""

    text: str
    tokens_in: int = 0
    tokens_out: int = 0
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
