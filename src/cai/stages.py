"""The stages of a record, as requests to build and replies to read: draft, critique, revise."""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cai.config import GenConfig, Request
from cai.constitution import Principle
from cai.prompts import fewshot, render


class Verdict(BaseModel):
    """The critic's structured verdict."""

    model_config = ConfigDict(extra="ignore")

    critique: str
    violates: bool
    severity: int = Field(ge=0, le=3)


# Bounded so that a verdict fits in the critic's token budget (a cut-off JSON object cannot be read).
CRITIQUE_MAX_CHARS = 400

VERDICT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "critique": {"type": "string", "maxLength": CRITIQUE_MAX_CHARS},
        "violates": {"type": "boolean"},
        "severity": {"type": "integer", "minimum": 0, "maximum": 3},
    },
    "required": ["critique", "violates", "severity"],
    "additionalProperties": False,
}

REPAIR = ("Your last reply was not a valid JSON object of the form "
          '{"critique": string, "violates": true|false, "severity": 0-3}. Reply again with only that JSON object.')


def markers(response: str) -> tuple[str, str]:
    """Delimiters for quoting a response; the tag depends on the text, so a draft cannot close them."""
    tag = hashlib.sha256(response.encode()).hexdigest()[:10].upper()
    return f"<<<RESPONSE {tag}>>>", f"<<<END RESPONSE {tag}>>>"


def quote(response: str) -> dict[str, str]:
    open_, close = markers(response)
    body = response.replace(open_, "").replace(close, "")
    return {"open": open_, "close": close, "response": body}


def conversation(messages: list[dict[str, str]]) -> str:
    names = {"user": "User", "assistant": "Assistant", "system": "System", "developer": "Developer"}
    return "\n".join(f"{names.get(m['role'], m['role'])}: {m['content']}" for m in messages)


def draft_request(messages: list[dict[str, str]], cfg: GenConfig) -> Request:
    return Request(messages=tuple(messages), config=cfg)


def _critique_turn(messages: list[dict[str, str]], response: str, critique_request: str) -> str:
    return render("critique", conversation=conversation(messages), critique_request=critique_request,
                  **quote(response))


def _examples(n: int | None) -> tuple[dict[str, Any], ...]:
    """The first `n` worked examples of prompts/fewshot.yaml (all of them for None)."""
    return fewshot() if n is None else fewshot()[:n]


def critique_request(messages: list[dict[str, str]], response: str, principle: Principle,
                     cfg: GenConfig, examples: int | None = None) -> Request:
    """The critic's request: instructions, `examples` worked examples (default all) as turns, then the task.
    The instructions and examples are the same for every record (`static_prefix`)."""
    msgs: list[dict[str, str]] = [{"role": "system", "content": render("critic_system")}]
    for ex in _examples(examples):
        msgs.append({"role": "user", "content": _critique_turn(
            [{"role": "user", "content": ex["prompt"]}], ex["response"], ex["critique_request"])})
        verdict = {"critique": ex["critique"], "violates": ex["violates"], "severity": ex["severity"]}
        msgs.append({"role": "assistant", "content": json.dumps(verdict)})
    static = len(msgs)
    msgs.append({"role": "user", "content": _critique_turn(messages, response, principle.critique)})
    return Request(messages=tuple(msgs), config=cfg, schema=VERDICT_SCHEMA, schema_name="verdict",
                   static_prefix=static)


def repair_request(request: Request, bad_reply: str) -> Request:
    msgs = (*request.messages, {"role": "assistant", "content": bad_reply}, {"role": "user", "content": REPAIR})
    return Request(messages=msgs, config=request.config, schema=request.schema, schema_name=request.schema_name,
                   static_prefix=request.static_prefix)


_FENCE = re.compile(r"^```(?:json)?\s*|\s*```$")


def parse_verdict(text: str) -> Verdict | None:
    """The verdict in the critic's own reply, or None if it is not valid JSON of the right shape."""
    cleaned = _FENCE.sub("", text.strip())
    try:
        return Verdict.model_validate_json(cleaned)
    except ValidationError:
        return None


def _revise_turn(messages: list[dict[str, str]], response: str, critique: str, revision_request: str,
                 feedback: str) -> str:
    return render("revise", conversation=conversation(messages), critique=critique,
                  revision_request=revision_request, feedback=feedback, **quote(response))


def revise_request(messages: list[dict[str, str]], response: str, critique: str, principle: Principle,
                   cfg: GenConfig, feedback: str = "", examples: int | None = None) -> Request:
    """The reviser's request, built like the critic's (`examples` worked examples, default all)."""
    msgs: list[dict[str, str]] = [{"role": "system", "content": render("reviser_system")}]
    for ex in _examples(examples):
        msgs.append({"role": "user", "content": _revise_turn(
            [{"role": "user", "content": ex["prompt"]}], ex["response"], ex["critique"],
            ex["revision_request"], "")})
        msgs.append({"role": "assistant", "content": ex["revision"]})
    static = len(msgs)
    msgs.append({"role": "user", "content": _revise_turn(messages, response, critique, principle.revision,
                                                         feedback)})
    return Request(messages=tuple(msgs), config=cfg, static_prefix=static)


_ECHOED_MARKER = re.compile(r"<<<\s*(?:END\s+)?RESPONSE(?:\s+[0-9A-F]{1,10})?\s*>*")


def clean_revision(text: str, response: str) -> str:
    """Strip whitespace and any quoting markers (whole or partial) the reviser echoed back."""
    open_, close = markers(response)
    text = text.replace(open_, "").replace(close, "")
    return _ECHOED_MARKER.sub("", text).strip()
