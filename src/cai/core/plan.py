"""The calls one record will make, as `cai estimate` counts them: the pipeline's stages (`cai.core.pipeline`) built
with the same request builders (`cai.core.stages`, the scorer's and labeler's `requests`), without sending any.

A reply not written yet (a draft, a critique, a revision, a sampled candidate) is stood in for by `max_tokens` worth
of text, so the prompts that quote it are an upper bound; a request built from known texts only is `exact`. The
steps a record already has in its run's store are not planned again, and the later prompts quote their real texts.
`--stop-when-clean` is planned as if every round found a violation (an upper bound); a critique already stored that
found none ends the record's rounds, as in the run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from cai.calls import Request
from cai.constitution import Constitution, sample_principles
from cai.core.pipeline import Done, critic_config
from cai.core.records import InputRecord
from cai.core.scoring import Labeler, Scorer
from cai.core.stages import CRITIQUE_MAX_CHARS, Authority, critique_request, draft_request, revise_request
from cai.settings import RunSettings
from cai.store.steps import Kind


@dataclass(frozen=True)
class Planned:
    """One call: the role that makes it and its request; `exact` when no stand-in text is in it."""

    role: str
    request: Request
    exact: bool


@dataclass(frozen=True)
class Text:
    """A response as the plan knows it: its text, or a stand-in (`known` False) for one not written yet."""

    text: str
    known: bool


class RecordPlan:
    """Plans records under one run's settings. `filler(role, tokens)`: stand-in text of that many of the writing
    role's tokens; `logprobs`: whether each plugin role's model gives logprobs."""

    def __init__(self, settings: RunSettings, const: Constitution, scorer: Scorer | None, labeler: Labeler | None,
                 filler: Callable[[str, int], str], logprobs: Mapping[str, bool]) -> None:
        self.s, self.const, self.scorer, self.labeler = settings, const, scorer, labeler
        self.filler, self.logprobs = filler, logprobs
        self.authority = Authority.of(const)

    def _stand_in(self, role: str, tokens: int) -> Text:
        return Text(self.filler(role, tokens), False)

    def calls(self, rec: InputRecord, done: Done) -> Iterator[Planned]:
        """Every call `rec` makes from here, in the pipeline's order (`Pipeline._steps`)."""
        loop, cfg = self.s.loop, self.s.generation
        if (Kind.DRAFT, 0) in done:
            response = Text(done[(Kind.DRAFT, 0)].data["response"], True)
        else:
            yield Planned("generator", draft_request(rec.messages, cfg), True)
            response = self._stand_in("generator", cfg.max_tokens)
        score = done.get((Kind.GRADE, 0))
        yield from self._grade(rec, response, 0, done)
        candidates = [response]
        for rnd, principle in enumerate(sample_principles(self.const, cfg.seed, rec.messages, loop.rounds), start=1):
            crit = done.get((Kind.CRITIQUE, rnd))
            if crit is None:
                req = critique_request(rec.messages, response.text, principle, critic_config(self.s),
                                       examples=loop.fewshot, authority=self.authority)
                yield Planned("critic", req, response.known)
                critique, verdict = self._stand_in("critic", CRITIQUE_MAX_CHARS // 4), None
            else:
                critique, verdict = Text(crit.data["critique"], True), crit.verdict
                if loop.stop_when_clean and verdict is not None and not verdict["violates"]:
                    break
            if (Kind.REVISE, rnd) in done:
                response = Text(done[(Kind.REVISE, rnd)].data["response"], True)
            else:
                feedback = (self.scorer.feedback(score.score) if self.scorer is not None and score is not None
                            and score.score is not None else "")
                override = self.authority is not None and (verdict is None or bool(verdict.get("rule_override")))
                req = revise_request(rec.messages, response.text, critique.text, principle, cfg, feedback,
                                     examples=loop.fewshot, authority=self.authority, override=override)
                graded = self.scorer is None or score is not None  # the feedback is known
                yield Planned("reviser", req, response.known and critique.known and graded)
                response = self._stand_in("reviser", cfg.max_tokens)
            score = done.get((Kind.GRADE, rnd))
            yield from self._grade(rec, response, rnd, done)
            if "revisions" in loop.candidates_from:
                candidates.append(response)
        if self.labeler is not None and (Kind.LABEL, 0) not in done:
            yield from self._label(rec, candidates, done)

    def _grade(self, rec: InputRecord, response: Text, rnd: int, done: Done) -> Iterator[Planned]:
        if self.scorer is None or (Kind.GRADE, rnd) in done:
            return
        yield from self._scored(rec, response)

    def _scored(self, rec: InputRecord, response: Text) -> Iterator[Planned]:
        requests = getattr(self.scorer, "requests", None)
        if requests is None:
            return
        for role, req in requests(rec.messages, response.text, rec.extra, self.logprobs):
            yield Planned(role, req, response.known or not _quotes(req, response.text))

    def _label(self, rec: InputRecord, candidates: list[Text], done: Done) -> Iterator[Planned]:
        """The sampled candidates (`Pipeline._label`), each graded with a scorer, then the labeler's calls over the
        distinct candidates (stand-ins are all taken to differ: an upper bound)."""
        loop, cfg = self.s.loop, self.s.generation
        if "samples" in loop.candidates_from:
            for n in range(1, loop.candidates):
                if (Kind.CANDIDATE, n) in done:
                    sample = Text(done[(Kind.CANDIDATE, n)].data["response"], True)
                else:
                    sample_cfg = cfg.model_copy(update={"seed": (cfg.seed or 0) + n})
                    yield Planned("generator", draft_request(rec.messages, sample_cfg), True)
                    sample = self._stand_in("generator", cfg.max_tokens)
                    if self.scorer is not None:
                        yield from self._scored(rec, sample)
                candidates.insert(n, sample)
        requests = getattr(self.labeler, "requests", None)
        if requests is None:
            return
        unique: dict[str, Text] = {}
        for i, c in enumerate(candidates):
            unique.setdefault(c.text if c.known else f"\0{i}", c)
        texts = list(unique.values())
        known = all(c.known for c in texts)
        for role, req in requests(rec.messages, [c.text for c in texts], cfg.seed, self.logprobs):
            yield Planned(role, req, known)


def _quotes(request: Request, text: str) -> bool:
    """Whether a message of `request` holds `text`."""
    return any(text in m["content"] for m in request.messages)


def plugin_plans(scorer: Any, labeler: Any) -> list[str]:
    """The plugins on whose calls the plan is silent: those without a `requests` method."""
    return [f"{kind} {type(p).__name__}" for kind, p in (("scorer", scorer), ("labeler", labeler))
            if p is not None and not hasattr(p, "requests")]
