"""Deterministic checks: plain functions over a batch, registered by name.

The registry is in the core because a constitution's `checks` section names them and is validated
against it when the constitution loads; rule-based rewards (`cai.rbr`) compute them.

A check has the shape of a trl reward function:

    fn(prompts: list[list[Message]], completions: list[str], **context) -> list[float]

one score in [0, 1] per (prompt, completion). `context` carries per-constitution settings such as
`length_budget` (words); a check ignores what it does not use. Register one with `@check("name")`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

from cai.calls import Message, prompt_text
from cai.scoring import refusal as refusal_classifier

CheckFn = Callable[..., list[float]]
CHECKS: dict[str, CheckFn] = {}
DEFAULT_LENGTH_BUDGET = 300  # words, when the constitution sets no `length_budget`
OPENING_CHARS = 300  # how far into a response a refusal counts as "up front"


def check(name: str) -> Callable[[CheckFn], CheckFn]:
    """Register `fn` under `name` in `CHECKS`."""

    def deco(fn: CheckFn) -> CheckFn:
        CHECKS[name] = fn
        return fn

    return deco


def run_checks(names: Sequence[str], prompts: list[list[Message]], completions: list[str],
               **context: Any) -> list[dict[str, float]]:
    """Scores of the named checks, one `{name: score}` dict per completion."""
    unknown = [n for n in names if n not in CHECKS]
    if unknown:
        raise KeyError(f"unknown check(s): {', '.join(unknown)}")
    columns = {n: CHECKS[n](prompts, completions, **context) for n in names}
    return [{n: float(columns[n][i]) for n in names} for i in range(len(completions))]


def _clip(x: float) -> float:
    return max(0.0, min(1.0, x))


def _words(text: str) -> list[str]:
    return re.findall(r"[A-Za-z0-9']+", text)


def _sentences(text: str) -> list[str]:
    parts = re.split(r"(?<=[.!?])\s+|\n+", text.strip())
    return [p for p in parts if p.strip()]


_AI_SELF = re.compile(
    r"\b(as an? (ai|a\.i\.|artificial intelligence|language model|chatbot|virtual assistant)"
    r"|i(?:'m| am) (just |only |merely )?an? (ai|a\.i\.|artificial intelligence|language model|chatbot|bot)"
    r"|(large )?language model)\b", re.I)


@check("mentions_ai_language_model")
def mentions_ai_language_model(prompts: list[list[Message]], completions: list[str], **_: Any) -> list[float]:
    """1 if the response calls itself an AI / language model ("As an AI language model, ..."), else 0."""
    return [1.0 if _AI_SELF.search(_plain(c)) else 0.0 for c in completions]


_APOLOGY = re.compile(r"\b(sorry|apologi[sz]e[sd]?|apologies|apologising|apologizing|i regret|forgive me)\b", re.I)
APOLOGY_CAP = 3


@check("apology_count")
def apology_count(prompts: list[list[Message]], completions: list[str], **_: Any) -> list[float]:
    """Apologies in the response, normalised: min(count, 3) / 3."""
    return [min(len(_APOLOGY.findall(c)), APOLOGY_CAP) / APOLOGY_CAP for c in completions]


_NEG = (r"(?:can't|cannot|can not|won't|will not|(?:am|'m|are|'re) (?:not able|unable) to"
        r"|(?:am|'m|are|'re) not (?:going|allowed|permitted) to)")
_VERB = (r"(?:help|assist|provide|comply|share|give|write|create|support|fulfil|fulfill|engage|generate"
         r"|answer|discuss|offer|continue|participate|do that|do this|go along)")
_REFUSAL = re.compile(
    rf"\b(?:i|we) {_NEG} (?:\w+ )?{_VERB}\b"
    r"|\b(?:i|we) (?:must|have to|need to|will have to) (?:respectfully |politely )?(?:decline|refuse|refrain)"
    r"|\bi(?:'m| am) (?:sorry|afraid),? but (?:i|we)\b"
    r"|\b(?:against|violates?|goes against) (?:my|our|the) (?:guidelines|polic|rules|usage polic|content polic)",
    re.I)


def _plain(text: str) -> str:
    """Typographic apostrophes as ASCII, so patterns match either."""
    return text.replace("\u2019", "'").replace("\u2018", "'")


@check("refusal_phrasing")
def refusal_phrasing(prompts: list[list[Message]], completions: list[str], **_: Any) -> list[float]:
    """Refusal wording ("I can't help with that", "I must decline", "against my guidelines").

    1.0 when it appears in the opening (first 300 characters), 0.4 when only later in the response
    (a refusal tacked onto an answer), 0.0 when absent. `cai rbr metrics` counts >= 0.5 as a refusal,
    so only a refusal up front counts.
    """
    out = []
    for c in completions:
        m = _REFUSAL.search(_plain(c))
        out.append(0.0 if m is None else (1.0 if m.start() < OPENING_CHARS else 0.4))
    return out


@check("refusal")
def refusal(prompts: list[list[Message]], completions: list[str], **_: Any) -> list[float]:
    """Three-way refusal classifier (`cai.scoring.refusal`): full refusal 1, partial refusal 0.5, compliance 0."""
    return [refusal_classifier.score(c, prompt_text(p)) for p, c in zip(prompts, completions)]


@check("verbosity")
def verbosity(prompts: list[list[Message]], completions: list[str], *, length_budget: int | None = None,
              **_: Any) -> list[float]:
    """Length in words over the constitution's `length_budget` (default 300), capped at 1."""
    budget = length_budget or DEFAULT_LENGTH_BUDGET
    return [_clip(len(_words(c)) / budget) for c in completions]


_SECOND_PERSON = re.compile(r"\b(you|your|you're|yourself)\b", re.I)


@check("asks_clarifying_question")
def asks_clarifying_question(prompts: list[list[Message]], completions: list[str], **_: Any) -> list[float]:
    """1 if some sentence is a question addressed to the user (ends in '?' and says "you"), else 0."""
    return [1.0 if any(s.rstrip().endswith("?") and _SECOND_PERSON.search(s) for s in _sentences(c)) else 0.0
            for c in completions]


@check("exclamation_density")
def exclamation_density(prompts: list[list[Message]], completions: list[str], **_: Any) -> list[float]:
    """Exclamation marks per sentence, capped at 1."""
    return [_clip(c.count("!") / max(1, len(_sentences(c)))) for c in completions]


_HEDGES = re.compile(
    r"\b(might|may|perhaps|possibly|probably|likely|unlikely|maybe|seems?|seemingly|arguably|somewhat"
    r"|generally|typically|usually|often|i think|i believe|i guess|i suppose|in some cases"
    r"|it depends|not necessarily|to some extent)\b", re.I)
HEDGE_SCALE = 10  # one hedge every 10 words scores 1


@check("hedging_density")
def hedging_density(prompts: list[list[Message]], completions: list[str], **_: Any) -> list[float]:
    """Hedging words ("might", "perhaps", "I think", …) per word, times 10, capped at 1."""
    out = []
    for c in completions:
        n = len(_words(c))
        out.append(_clip(HEDGE_SCALE * len(_HEDGES.findall(c)) / n) if n else 0.0)
    return out
