"""Score one response with rule-based rewards: the hooks the pipeline calls.

`score_response` returns a JSON-serialisable dict:

    {"response_type": str, "response_type_source": "given" | "classified",
     "propositions": {id: {"p_yes": float, "method": "logprobs" | "votes" | "joint" | "none"}},
     "checks": {name: float}, "class": "ideal" | "minimum_acceptable" | "unacceptable",
     "reward": float, "failed": [str, ...], "usage": {"calls", "tokens_in", "tokens_out"}}

`failed` lists, in words, the propositions that differ from the response type's closest ideal rule
and the checks outside the type's bounds; `feedback_text(score)` turns it into advice for a reviser.
"""

from __future__ import annotations

from typing import Any

from cai.calls import Message
from cai.constitution import Constitution
from cai.core.engine import Engine
from cai.errors import InputError
from cai.rbr.grader import Usage, classify_response_type, grade
from cai.rbr.reward import Weights, reward
from cai.rbr.rules import classify, failed_items, truth
from cai.scoring.checks import run_checks


def check_scores(const: Constitution, messages: list[Message], response: str) -> dict[str, float]:
    """The constitution's deterministic checks for one response."""
    names = [c.name for c in const.checks]
    return run_checks(names, [messages], [response], length_budget=const.length_budget)[0] if names else {}


def assemble(const: Constitution, weights: Weights, response_type: str, props: dict[str, dict[str, Any]],
             checks: dict[str, float]) -> dict[str, Any]:
    """Class, reward and failed items from graded propositions and check scores."""
    p_yes = {k: float(v["p_yes"]) for k, v in props.items()}
    rtype = const.response_types[response_type]
    return {"response_type": response_type, "propositions": props, "checks": checks,
            "class": classify(rtype, truth(p_yes)),
            "reward": round(reward(weights, response_type, p_yes, checks), 6),
            "failed": failed_items(const, response_type, p_yes, checks)}


async def score_response(engine: Engine, role: str, const: Constitution, weights: Weights,
                         messages: list[Message], response: str, response_type: str | None = None,
                         mode: str = "separate", votes: int = 3) -> dict[str, Any]:
    """Grade `response` to `messages` and score it (see the module docstring for the dict).

    `response_type` None asks the model to classify the prompt first (`prompts/rbr_classify.txt`).
    Raises InputError for a response type the constitution does not define, or a constitution
    without propositions or response types; a failed model call raises the ProviderError.
    """
    if not const.propositions or not const.response_types:
        raise InputError(f"constitution {const.name} has no propositions or response_types for rule-based "
                         "rewards (try --constitution rbr-safety)")
    usage = Usage()
    source = "given"
    if response_type is None:
        response_type = await classify_response_type(engine, role, const, messages, usage)
        source = "classified"
    elif response_type not in const.response_types:
        raise InputError(f"unknown response type {response_type!r} (constitution {const.name} has: "
                         f"{', '.join(const.response_types)})")
    props = await grade(engine, role, const, messages, response, mode=mode, votes=votes, usage=usage)
    out = assemble(const, weights, response_type, props, check_scores(const, messages, response))
    out["response_type_source"] = source
    out["usage"] = usage.as_dict()
    return out


def feedback_text(score: dict[str, Any]) -> str:
    """A short note for the reviser: the class, and what went the wrong way. Empty when nothing failed."""
    failed = score.get("failed") or []
    if not failed:
        return ""
    head = (f"A rule-based grader rated this response {str(score.get('class', '?')).replace('_', ' ')} for a "
            f"'{score.get('response_type', '?')}' request. Fix these points:")
    return "\n".join([head, *(f"- {item}" for item in failed)])
