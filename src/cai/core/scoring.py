"""Scorers and labelers: the protocols of the plugins that grade each response of the loop or label a prompt's
candidates, and how the core builds them.

The pipeline calls `Scorer.score` after the draft and after each revision, stores the dict it returns as
the round's `grade` step (`{"score": ...}`), and gives `Scorer.feedback(score)` to the reviser. The core
never imports a scorer's package: a plugin registers a factory as a `scorer.NAME` or `labeler.NAME` entry point
(`cai.plugins`; `cai.rbr` registers "rbr", `cai.labels` the labeler "ai"), loaded when a run asks for it.

`cai estimate` counts a plugin's calls if it has a `requests` method, optional (`cai.core.estimate`):
`Scorer.requests(messages, response, extra, logprobs)` and `Labeler.requests(messages, candidates, seed,
logprobs)`, with `candidates` the responses' texts and `logprobs` {role: whether its model gives logprobs}, return
the (role, `cai.calls.Request`) of every call `score` / `label` would make.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from cai import plugins
from cai.settings import RunSettings

if TYPE_CHECKING:  # for annotations only
    from cai.calls import Message
    from cai.constitution import Constitution
    from cai.core.engine import Engine


class Scorer(Protocol):
    """Grades one response; everything it returns is JSON-serialisable."""

    def models(self) -> dict[str, str]:
        """Extra engine roles the scorer calls, role → model spec (e.g. {"grader": "openai:gpt-4o-mini"})."""
        ...

    async def score(self, engine: Engine, messages: list[Message], response: str,
                    extra: dict[str, Any]) -> dict[str, Any]:
        """The score of `response` to `messages`; `extra` is the input row's other fields."""
        ...

    def feedback(self, score: dict[str, Any]) -> str:
        """Advice for the reviser from a score ("" for none)."""
        ...

    def fingerprint(self) -> dict[str, Any]:
        """What about the scorer must not change between invocations of one run."""
        ...


def make_scorer(name: str, settings: RunSettings, const: Constitution) -> Scorer:
    """The `scorer.NAME` plugin (`cai.plugins`), built for this run. InputError if none is installed."""
    return plugins.load("scorer", name)(settings, const)  # type: ignore[no-any-return]


class Labeler(Protocol):
    """Labels a prompt's candidate responses (AI preference labels). The pipeline calls `label` once per record
    with two or more candidates and stores what it returns as the record's `label` step; the exports read it
    (`cai.read.rows.label_rows`):

        {"judge": spec, "cot": bool,
         "candidates": [{"source": "draft"|"sample"|"revision"|..., "n": int, "response": str, "reward"?}, ...],
         "comparisons": [{"a": i, "b": j, "principle": id, "p_ab": P(A) with a shown as (A),
                          "p_ba": P(A) with b shown as (A), "p": P(a ≻ b) over both orders, "method": str}, ...],
         "rankings": {by: {"by", "method", "scores": [...],
                           "pairs": [{"chosen", "rejected", "margin": P - 0.5, "score_chosen", "score_rejected"},
                                     ...every two candidates, winner first]}, ...}}

    `by` is "judge", and with rewards on every candidate also "rbr" and "judge+rbr"; the exports keep the pairs
    of the run's `rank_by` whose margin exceeds its `min_margin` and count the others as near-ties.
    """

    def models(self) -> dict[str, str]:
        """Extra engine roles the labeler calls, role → model spec (e.g. {"judge": "openai:gpt-4o"})."""
        ...

    async def label(self, engine: Engine, messages: list[Message], candidates: list[dict[str, Any]],
                    seed: int | None) -> dict[str, Any]:
        """The label step of one prompt's candidates (`{"source", "n", "response", "reward"?}` each)."""
        ...

    def fingerprint(self) -> dict[str, Any]:
        """What about the labeler must not change between invocations of one run."""
        ...


def make_labeler(name: str, settings: RunSettings, const: Constitution) -> Labeler:
    """The `labeler.NAME` plugin (`cai.plugins`), built for this run. InputError if none is installed."""
    return plugins.load("labeler", name)(settings, const)  # type: ignore[no-any-return]
