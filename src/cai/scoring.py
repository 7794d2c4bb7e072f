"""Scorers: plugins that grade each response of the loop, and the registry the core builds them from.

The pipeline calls `Scorer.score` after the draft and after each revision, stores the dict it returns as
the round's `grade` step (`{"score": ...}`), and gives `Scorer.feedback(score)` to the reviser. The core
never imports a scorer's package: a plugin registers a factory under a name (`register_scorer`), and the
composition layer (`cai.api`, `cai.cli`) imports the plugin so that its name is there when a run asks
for it (`cai.rbr` registers "rbr").
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from cai.errors import InputError
from cai.settings import RunSettings

if TYPE_CHECKING:  # for annotations only: registering a scorer stays a light import
    from cai.constitution import Constitution
    from cai.engine import Engine

Message = dict[str, str]


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


#: Builds a scorer from the run's settings and its constitution.
ScorerFactory = Callable[[RunSettings, "Constitution"], Scorer]

_SCORERS: dict[str, ScorerFactory] = {}


def register_scorer(name: str, factory: ScorerFactory) -> None:
    """Make `make_scorer(name, ...)` call `factory` (a later registration replaces an earlier one)."""
    _SCORERS[name] = factory


def make_scorer(name: str, settings: RunSettings, const: Constitution) -> Scorer:
    """The scorer registered as `name`, built for this run. InputError if no plugin registered it."""
    factory = _SCORERS.get(name)
    if factory is None:
        raise InputError(f"no scorer named {name!r} is registered (import its plugin first, e.g. cai.{name})")
    return factory(settings, const)
