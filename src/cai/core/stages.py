"""The stages of a record, as requests to build and replies to read: draft, critique, revise."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cai.calls import GenConfig, Request
from cai.constitution import Constitution, Principle
from cai.prompts import fewshot, render


class Verdict(BaseModel):
    """The critic's structured verdict."""

    model_config = ConfigDict(extra="ignore")

    critique: str
    violates: bool
    severity: int = Field(ge=0, le=3)
    rule_override: bool | None = None  # asked for under a layered constitution: did someone try to override a rule?


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

# Under a layered constitution the critic also says whether anyone tried to override a rule.
OVERRIDE_SCHEMA: dict[str, Any] = {
    **VERDICT_SCHEMA,
    "properties": {**VERDICT_SCHEMA["properties"], "rule_override": {"type": "boolean"}},
    "required": [*VERDICT_SCHEMA["required"], "rule_override"],
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


@dataclass(frozen=True)
class Authority:
    """The chain of command of a constitution with rules or defaults: its rules and active defaults as (id,
    statement), shown to the critic and the reviser in the order of authority (prompts/authority.txt)."""

    rules: tuple[tuple[str, str], ...]
    defaults: tuple[tuple[str, str], ...]

    @classmethod
    def of(cls, const: Constitution) -> Authority | None:
        """None for a constitution without rules or defaults: its prompts stay as they always were."""
        if not const.layered:
            return None
        return cls(tuple((p.id, p.stated()) for p in const.section("rules")),
                   tuple((p.id, p.stated()) for p in const.section("defaults")))

    def block(self) -> str:
        def lines(items: tuple[tuple[str, str], ...]) -> str:
            return "\n".join(f"   - {pid}: {text}" for pid, text in items) or "   (none)"
        return render("authority", rules=lines(self.rules), defaults=lines(self.defaults))

    def principle(self, p: Principle) -> str:
        """The critic's question, with what its kind means under the chain of command."""
        if p.kind in ("rule", "default"):
            return f"{p.critique}\n{render(f'principle_{p.kind}', layer=p.layer)}"
        return p.critique


def draft_request(messages: list[dict[str, str]], cfg: GenConfig) -> Request:
    return Request(messages=tuple(messages), config=cfg)


def _critique_turn(messages: list[dict[str, str]], response: str, critique_request: str) -> str:
    return render("critique", conversation=conversation(messages), critique_request=critique_request,
                  **quote(response))


def _examples(n: int | None) -> tuple[dict[str, Any], ...]:
    """The first `n` worked examples of prompts/fewshot.yaml (all of them for None)."""
    return fewshot() if n is None else fewshot()[:n]


def critique_request(messages: list[dict[str, str]], response: str, principle: Principle,
                     cfg: GenConfig, examples: int | None = None, authority: Authority | None = None) -> Request:
    """The critic's request: instructions (with the order of authority, given one), `examples` worked examples
    (default all) as turns, then the task. The instructions and examples are the same for every record
    (`static_prefix`)."""
    system = render("critic_system")
    if authority is not None:
        system = f"{system}\n\n{authority.block()}\n{render('critic_override')}"
    msgs: list[dict[str, str]] = [{"role": "system", "content": system}]
    for ex in _examples(examples):
        msgs.append({"role": "user", "content": _critique_turn(
            [{"role": "user", "content": ex["prompt"]}], ex["response"], ex["critique_request"])})
        verdict = {"critique": ex["critique"], "violates": ex["violates"], "severity": ex["severity"]}
        if authority is not None:
            verdict["rule_override"] = False
        msgs.append({"role": "assistant", "content": json.dumps(verdict)})
    static = len(msgs)
    asked = authority.principle(principle) if authority is not None else principle.critique
    msgs.append({"role": "user", "content": _critique_turn(messages, response, asked)})
    return Request(messages=tuple(msgs), config=cfg, schema=OVERRIDE_SCHEMA if authority else VERDICT_SCHEMA,
                   schema_name="verdict", static_prefix=static)


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
                   cfg: GenConfig, feedback: str = "", examples: int | None = None,
                   authority: Authority | None = None, override: bool = False) -> Request:
    """The reviser's request, built like the critic's (`examples` worked examples, default all). Given the
    order of authority, the reviser is shown it and told to keep the developer's customizations and the rules
    (`override`: the critic found an attempt to override a rule)."""
    system = render("reviser_system")
    if authority is not None:
        system = f"{system}\n\n{authority.block()}"
        notes = [render("reviser_authority"), render("override_found") if override else "", feedback]
        feedback = "\n".join(x for x in notes if x)
    msgs: list[dict[str, str]] = [{"role": "system", "content": system}]
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
