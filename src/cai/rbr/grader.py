"""The grader: P(yes) for each proposition about a (conversation, response), and the response type.

Every request goes through `Engine.call(role, request)`, so it is cached in the run store and a
re-run resumes. Separate questions are asked through `cai.core.choice` (options `YES_NO`). Each score records
how it was obtained (`method`):

* `logprobs`: one call with max_tokens=1, temperature=0, top_logprobs=10; P(yes) = mass of yes-like
  first tokens over yes-like + no-like mass ("Yes", " yes", "TRUE", …). Used when the role's model
  supports logprobs; if neither kind of token is among the top 10, it falls back to votes.
* `votes`: n sampled answers (temperature 1, seeds 0..n-1); P(yes) = share of yes among the answers
  that read as yes or no.
* `joint`: all propositions in one structured call (a JSON object of booleans); P(yes) is 1 or 0
  (or the number given, clipped to [0, 1]).
* `none`: no answer could be read; P(yes) = 0.5.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
from typing import Any, Literal

from cai.calls import GenConfig, Message, Request
from cai.constitution import Constitution
from cai.core import choice
from cai.core.choice import YES_NO, Usage, answer_of, counted_call
from cai.core.engine import Engine
from cai.core.stages import conversation, quote
from cai.prompts import render

Mode = Literal["separate", "joint"]
MODES: tuple[str, ...] = ("separate", "joint")
JOINT_MAX_TOKENS = 512
CLASSIFY_MAX_TOKENS = 48


def _context(messages: list[Message], response: str) -> dict[str, str]:
    return {"conversation": conversation(messages), **quote(response)}


def proposition_messages(messages: list[Message], response: str, question: str) -> tuple[Message, ...]:
    """The grader's chat for one question; the question comes last so calls share a prefix."""
    user = render("rbr_proposition", question=question, **_context(messages, response))
    return ({"role": "system", "content": render("rbr_grader_system")}, {"role": "user", "content": user})


async def ask(engine: Engine, role: str, msgs: tuple[Message, ...], votes: int, usage: Usage) -> dict[str, Any]:
    """`{"p_yes", "method"}` for one yes/no question (`cai.core.choice.ask`)."""
    r = await choice.ask(engine, role, msgs, votes, usage, YES_NO)
    return {"p_yes": r["p"], "method": r["method"]}


async def grade_separate(engine: Engine, role: str, const: Constitution, messages: list[Message],
                         response: str, votes: int, usage: Usage) -> dict[str, dict[str, Any]]:
    """One question per proposition."""
    props = const.propositions
    results = await asyncio.gather(*(
        ask(engine, role, proposition_messages(messages, response, p.question), votes, usage) for p in props))
    return {p.id: r for p, r in zip(props, results)}


def joint_schema(const: Constitution) -> dict[str, Any]:
    ids = [p.id for p in const.propositions]
    return {"type": "object", "properties": {i: {"type": "boolean"} for i in ids}, "required": ids,
            "additionalProperties": False}


def joint_request(const: Constitution, messages: list[Message], response: str) -> Request:
    questions = "\n".join(f"- {p.id}: {p.question}" for p in const.propositions)
    user = render("rbr_joint", questions=questions, **_context(messages, response))
    msgs = ({"role": "system", "content": render("rbr_grader_system")}, {"role": "user", "content": user})
    return Request(messages=msgs, config=GenConfig(max_tokens=JOINT_MAX_TOKENS, temperature=0.0, seed=0),
                   schema=joint_schema(const), schema_name="propositions")


_FENCE = re.compile(r"^```(?:json)?\s*|\s*```$")


def _as_probability(value: Any) -> float | None:
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, (int, float)) and math.isfinite(value):
        return max(0.0, min(1.0, float(value)))
    if isinstance(value, str):
        a = answer_of(value, YES_NO)
        return None if a is None else float(a)
    return None


def parse_joint(text: str, ids: list[str]) -> dict[str, dict[str, Any]]:
    """Scores from a joint reply; a proposition missing or unreadable gets P(yes) 0.5, method `none`."""
    try:
        data = json.loads(_FENCE.sub("", text.strip()))
    except ValueError:
        data = None
    if not isinstance(data, dict):
        data = {}
    out: dict[str, dict[str, Any]] = {}
    for pid in ids:
        p = _as_probability(data.get(pid))
        out[pid] = {"p_yes": 0.5, "method": "none"} if p is None else {"p_yes": p, "method": "joint"}
    return out


async def grade_joint(engine: Engine, role: str, const: Constitution, messages: list[Message],
                      response: str, usage: Usage) -> dict[str, dict[str, Any]]:
    """All propositions in one structured call."""
    comp = await counted_call(engine, role, joint_request(const, messages, response), usage)
    return parse_joint(comp.text, [p.id for p in const.propositions])


async def grade(engine: Engine, role: str, const: Constitution, messages: list[Message], response: str,
                mode: str = "separate", votes: int = 3, usage: Usage | None = None) -> dict[str, dict[str, Any]]:
    """`{proposition id: {"p_yes", "method"}}` in the given mode."""
    usage = usage if usage is not None else Usage()
    if mode == "joint":
        return await grade_joint(engine, role, const, messages, response, usage)
    if mode != "separate":
        raise ValueError(f"unknown grader mode {mode!r} (known: {', '.join(MODES)})")
    return await grade_separate(engine, role, const, messages, response, votes, usage)


def classify_request(const: Constitution, messages: list[Message]) -> Request:
    names = list(const.response_types)
    types = "\n".join(f"- {n}: {t.description}" if t.description else f"- {n}"
                      for n, t in const.response_types.items())
    user = render("rbr_classify", conversation=conversation(messages), types=types, names=", ".join(names))
    schema = {"type": "object", "properties": {"response_type": {"type": "string", "enum": names}},
              "required": ["response_type"], "additionalProperties": False}
    return Request(messages=({"role": "user", "content": user},),
                   config=GenConfig(max_tokens=CLASSIFY_MAX_TOKENS, temperature=0.0, seed=0),
                   schema=schema, schema_name="response_type")


def parse_response_type(text: str, names: list[str]) -> str | None:
    """The response type named in the reply (JSON first, then the longest name found in the text)."""
    try:
        data = json.loads(_FENCE.sub("", text.strip()))
        if isinstance(data, dict) and data.get("response_type") in names:
            return str(data["response_type"])
    except ValueError:
        pass
    low = text.lower()
    found = [n for n in names if n.lower() in low]
    return max(found, key=len) if found else None


async def classify_response_type(engine: Engine, role: str, const: Constitution, messages: list[Message],
                                 usage: Usage | None = None) -> str:
    """Ask the model which response type applies; the first type listed when its reply names none."""
    names = list(const.response_types)
    usage = usage if usage is not None else Usage()
    comp = await counted_call(engine, role, classify_request(const, messages), usage)
    return parse_response_type(comp.text, names) or names[0]
