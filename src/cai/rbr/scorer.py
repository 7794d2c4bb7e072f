"""Rule-based rewards as a `cai.core.scoring.Scorer`: what `cai run --rbr` and `cai.run(..., rbr=True)` use.

`cai.rbr` registers `rbr_scorer` as the "rbr" scorer on import; the core builds it through the registry.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cai import constitution as constitution_mod
from cai.calls import Request
from cai.constitution import Constitution
from cai.core.choice import planned
from cai.core.engine import Engine
from cai.errors import InputError
from cai.rbr.grader import classify_request, joint_request, proposition_messages
from cai.rbr.reward import Weights, load_weights
from cai.rbr.score import feedback_text, score_response
from cai.settings import RunSettings, ScoringSettings

ROLE = "grader"


class RbrScorer:
    """Grades with a constitution's propositions, rules and checks; the score is `score_response`'s dict."""

    def __init__(self, const: Constitution, weights: Weights, model: str, *, mode: str = "separate",
                 votes: int = 3, feedback: bool = True) -> None:
        self.const, self.weights, self.model = const, weights, model
        self.mode, self.votes, self.give_feedback = mode, votes, feedback

    def models(self) -> dict[str, str]:
        return {ROLE: self.model}

    async def score(self, engine: Engine, messages: list[dict[str, str]], response: str,
                    extra: dict[str, Any]) -> dict[str, Any]:
        """`extra["response_type"]` (a string) skips classifying the prompt."""
        rtype = extra.get("response_type")
        return await score_response(engine, ROLE, self.const, self.weights, messages, response,
                                    rtype if isinstance(rtype, str) else None, mode=self.mode, votes=self.votes)

    def requests(self, messages: list[dict[str, str]], response: str, extra: dict[str, Any],
                 logprobs: Mapping[str, bool]) -> list[tuple[str, Request]]:
        """(role, request) of each call `score` makes for this response when the grader's answers can be read
        (`logprobs`: whether each role's model gives logprobs); for `cai estimate`."""
        out: list[tuple[str, Request]] = []
        if not isinstance(extra.get("response_type"), str):
            out.append((ROLE, classify_request(self.const, messages)))
        if self.mode == "joint":
            return [*out, (ROLE, joint_request(self.const, messages, response))]
        for p in self.const.propositions:
            msgs = proposition_messages(messages, response, p.question)
            out += [(ROLE, r) for r in planned(msgs, self.votes, logprobs.get(ROLE, False))]
        return out

    def feedback(self, score: dict[str, Any]) -> str:
        """The failed propositions and checks, or "" with feedback off (`--no-rbr-feedback`)."""
        return feedback_text(score) if self.give_feedback else ""

    def fingerprint(self) -> dict[str, Any]:
        return {"constitution_sha256": self.const.sha256, "grader_mode": self.mode, "votes": self.votes,
                "weights": self.weights, "feedback": self.give_feedback}


def rbr_scorer(settings: RunSettings, const: Constitution) -> RbrScorer:
    """The scorer for a run's settings: `scoring.constitution` if given, else the run's constitution if it has
    propositions, else rbr-safety; the grader model defaults to the critic's."""
    scoring = settings.scoring or ScoringSettings()
    name = scoring.constitution or (settings.loop.constitution if const.propositions else "rbr-safety")
    rconst = const if name == settings.loop.constitution else constitution_mod.load(name)
    if not rconst.propositions or not rconst.response_types:
        raise InputError(f"constitution {rconst.name!r} has no propositions/response_types for --rbr "
                         "(use --rbr-constitution rbr-safety)", path=rconst.path)
    weights = load_weights(scoring.weights, rconst)
    return RbrScorer(rconst, weights, scoring.grader or settings.models.critic, mode=scoring.mode,
                     votes=scoring.votes, feedback=scoring.feedback)
