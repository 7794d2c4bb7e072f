"""Scorers and labelers: plugins that grade each response of the loop or label a prompt's candidates, and the
registries the core builds them from.

The pipeline calls `Scorer.score` after the draft and after each revision, stores the dict it returns as
the round's `grade` step (`{"score": ...}`), and gives `Scorer.feedback(score)` to the reviser. The core
never imports a scorer's package: a plugin registers a factory under a name (`register_scorer`), and the
composition layer (`cai.api`, `cai.cli`) imports the plugin so that its name is there when a run asks
for it (`cai.rbr` registers "rbr", `cai.labels` the labeler "ai").
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from cai.errors import InputError
from cai.settings import RunSettings

if TYPE_CHECKING:  # for annotations only: registering a scorer stays a light import
    from cai.config import Message
    from cai.constitution import Constitution
    from cai.engine import Engine


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


P = TypeVar("P")


class _Registry(Generic[P]):
    """Plugin factories by name: `(settings, constitution) -> plugin`; a later registration replaces one."""

    def __init__(self, kind: str, example: str) -> None:
        self.kind, self.example = kind, example
        self.factories: dict[str, Callable[[RunSettings, Constitution], P]] = {}

    def make(self, name: str, settings: RunSettings, const: Constitution) -> P:
        factory = self.factories.get(name)
        if factory is None:
            raise InputError(f"no {self.kind} named {name!r} is registered (import its plugin first, e.g. "
                             f"{self.example})")
        return factory(settings, const)


_SCORERS: _Registry[Scorer] = _Registry("scorer", "cai.rbr")


def register_scorer(name: str, factory: Callable[[RunSettings, Constitution], Scorer]) -> None:
    """Make `make_scorer(name, ...)` call `factory`."""
    _SCORERS.factories[name] = factory


def make_scorer(name: str, settings: RunSettings, const: Constitution) -> Scorer:
    """The scorer registered as `name`, built for this run. InputError if no plugin registered it."""
    return _SCORERS.make(name, settings, const)


class Labeler(Protocol):
    """Labels a prompt's candidate responses (AI preference labels). The pipeline calls `label` once per record
    with two or more candidates and stores what it returns as the record's `label` step; the exports read it
    (`cai.results.label_rows`):

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


_LABELERS: _Registry[Labeler] = _Registry("labeler", "cai.labels")


def register_labeler(name: str, factory: Callable[[RunSettings, Constitution], Labeler]) -> None:
    """Make `make_labeler(name, ...)` call `factory`."""
    _LABELERS.factories[name] = factory


def make_labeler(name: str, settings: RunSettings, const: Constitution) -> Labeler:
    """The labeler registered as `name`, built for this run. InputError if no plugin registered it."""
    return _LABELERS.make(name, settings, const)
