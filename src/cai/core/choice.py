"""Two-option questions to a model (yes/no, A/B): P(first option) from logprobs or from sampled votes.

`ask` makes one call with max_tokens=1, temperature=0, top_logprobs=10 when the role's model supports
logprobs, and reads P(first) = first-option mass / (first + second mass) among the first position's top
tokens. If the model has no logprobs, or neither option is among those tokens, it samples `votes` short
answers (temperature 1, seeds 0..n-1) and takes the share of first among the answers that read as an option;
if none does, P = 0.5 with method `none`. Every call goes through `Engine.call`, so it is cached in the store.

For chain-of-thought replies, `answer_after` reads the option named after an answer marker in the text and
`p_first_at_answer` reads P(first) at that token of the completion's logprobs.
"""

from __future__ import annotations

import asyncio
import functools
import math
import re
from dataclasses import dataclass
from itertools import accumulate
from typing import Literal, TypedDict

from cai.calls import Completion, GenConfig, Message, Request
from cai.core.engine import Engine

Top = list[tuple[str, float]]  # one position's (token, logprob) entries
LOGPROB_CONFIG = GenConfig(max_tokens=1, temperature=0.0, top_logprobs=10, seed=0)
VOTE_MAX_TOKENS = 3
ANSWER_MARKER = r"answer\s*(?:is\s*)?[:：]?\s*"  # "Answer: (A)", "**Answer:** B", "the answer is yes"
_EDGE = r"\s.,:;!\"'`*()\[\]"  # stripped around a token or word: whitespace and .,:;!"'`*()[]
_STRIP = re.compile(rf"^[{_EDGE}]+|[{_EDGE}]+$")
_WORD = re.compile(rf"[{_EDGE}]*(\S*)")  # the first word with a letter in it (after the edge characters)


def norm(token: str) -> str:
    """A token or word without surrounding whitespace and .,:;!"'`*()[], lower-cased: " (A" → "a"."""
    return _STRIP.sub("", token).lower()


@dataclass(frozen=True)
class Options:
    """The two answers: normalised token texts that read as the first or the second option."""

    first: frozenset[str]
    second: frozenset[str]
    name: str = ""

    def read(self, word: str) -> bool | None:
        """True for the first option, False for the second, None for anything else."""
        w = norm(word)
        return True if w in self.first else False if w in self.second else None


YES_NO = Options(frozenset({"yes", "true"}), frozenset({"no", "false"}), "yes/no")
A_B = Options(frozenset({"a"}), frozenset({"b"}), "A/B")


class Reading(TypedDict):
    p: float  # P(first option)
    method: Literal["logprobs", "votes", "none"]


#: |P − 0.5| at or below this is undecided: float noise, not a preference (a judge that always picks the
#: first-shown answer averages its two orders to 0.49999999999999994)
UNDECIDED_WITHIN = 1e-9


def leaning(p: float) -> int:
    """1 when P(first) favours the first option, -1 the second, 0 when undecided (within `UNDECIDED_WITHIN`
    of 0.5)."""
    return 0 if abs(p - 0.5) <= UNDECIDED_WITHIN else 1 if p > 0.5 else -1


def answer_of(text: str, options: Options) -> bool | None:
    """How the reply's first word reads: True (first option), False (second) or None."""
    words = text.split()
    return options.read(words[0]) if words else None


@functools.lru_cache(maxsize=32)
def _marker(marker_regex: str, at_end: bool) -> re.Pattern[str]:
    tail = rf"[{_EDGE}]*\Z" if at_end else ""
    return re.compile(rf"(?:{marker_regex}){tail}", re.IGNORECASE)


def answer_after(text: str, marker_regex: str, options: Options) -> bool | None:
    """The option named right after the last match of `marker_regex` (case-insensitive) that is followed by
    one; only whitespace and .,:;!"'`*()[] may come between ("Answer: **(B)**"). None if there is none."""
    for m in reversed(list(_marker(marker_regex, False).finditer(text))):
        word = _WORD.match(text, m.end())
        answer = options.read(word.group(1)) if word else None
        if answer is not None:
            return answer
    return None


def p_first_from_top(top: Top, options: Options) -> float | None:
    """P(first) from one position's top logprobs; None if neither option's tokens are there."""
    first = sum(math.exp(lp) for tok, lp in top if norm(tok) in options.first)
    second = sum(math.exp(lp) for tok, lp in top if norm(tok) in options.second)
    if first + second <= 0.0:
        return None
    return first / (first + second)


def _chosen(top: Top) -> str:
    """A position's most likely token: the sampled one at temperature 0 (entries need not be sorted)."""
    return max(top, key=lambda e: e[1])[0] if top else ""


def p_first_at_answer(top_logprobs: list[Top], text: str | None, marker_regex: str,
                      options: Options) -> float | None:
    """P(first) at the answer token of a chain-of-thought completion (meant for temperature 0).

    Providers keep only each position's top entries, not the sampled token, so each position's token is
    taken to be its most likely entry and the reply is rebuilt from those. The answer position is the last
    one whose token reads as an option, is not followed by more of the same word, and is preceded by a match
    of `marker_regex` with only whitespace and .,:;!"'`*()[] between. Returns `p_first_from_top` there.
    With `text` (the completion's text), `answer_after(text, ...)` must name the same option, else None: the
    rebuilt tokens are not what was sampled. None too when no position qualifies.
    """
    chosen = [_chosen(top) for top in top_logprobs]
    rebuilt = "".join(chosen)
    ends = list(accumulate(len(t) for t in chosen))
    tail = _marker(marker_regex, True)
    for i in reversed(range(len(chosen))):
        answer = options.read(chosen[i])
        if answer is None or norm(rebuilt[ends[i]:ends[i] + 1]):  # not an option, or the word goes on
            continue
        start = ends[i] - len(chosen[i])
        lead = re.match(rf"[{_EDGE}]*", chosen[i])
        before = rebuilt[max(0, start - 200):start] + (lead.group() if lead else "")
        if not tail.search(before):
            continue
        if text is not None and answer_after(text, marker_regex, options) is not answer:
            return None
        return p_first_from_top(top_logprobs[i], options)
    return None


@dataclass
class Usage:
    """Calls and tokens spent on one item (cached calls count with their recorded tokens)."""

    calls: int = 0
    tokens_in: int = 0
    tokens_out: int = 0

    def add(self, comp: Completion) -> None:
        self.calls += 1
        self.tokens_in += comp.tokens_in
        self.tokens_out += comp.tokens_out

    def as_dict(self) -> dict[str, int]:
        return {"calls": self.calls, "tokens_in": self.tokens_in, "tokens_out": self.tokens_out}


async def counted_call(engine: Engine, role: str, request: Request, usage: Usage) -> Completion:
    """`engine.call`, adding the completion to `usage`."""
    comp = await engine.call(role, request)
    usage.add(comp)
    return comp


def vote_requests(msgs: tuple[Message, ...], votes: int, max_tokens: int = VOTE_MAX_TOKENS) -> list[Request]:
    """The `votes` sampled answers' requests (temperature 1, seeds 0..n-1)."""
    return [Request(messages=msgs, config=GenConfig(max_tokens=max_tokens, temperature=1.0, seed=i))
            for i in range(max(1, votes))]


def planned(msgs: tuple[Message, ...], votes: int, logprobs: bool) -> list[Request]:
    """The requests `ask` sends for one question to a model with (or without) logprobs, when the logprobs can be
    read (else it also asks the votes: `cai estimate` says so but does not count them)."""
    return [Request(messages=msgs, config=LOGPROB_CONFIG)] if logprobs else vote_requests(msgs, votes)


async def ask_votes(engine: Engine, role: str, msgs: tuple[Message, ...], votes: int, usage: Usage,
                    options: Options = YES_NO) -> Reading:
    """P(first) as the share of first among `votes` sampled answers that read as an option."""
    reqs = vote_requests(msgs, votes)
    comps = await asyncio.gather(*(counted_call(engine, role, r, usage) for r in reqs))
    answers = [a for a in (answer_of(c.text, options) for c in comps) if a is not None]
    if not answers:
        return {"p": 0.5, "method": "none"}
    return {"p": sum(answers) / len(answers), "method": "votes"}


async def ask(engine: Engine, role: str, msgs: tuple[Message, ...], votes: int, usage: Usage,
              options: Options = YES_NO) -> Reading:
    """`{"p", "method"}` for one two-option question: logprobs when the model has them, else votes."""
    if engine.models[role].supports_logprobs:
        comp = await counted_call(engine, role, planned(msgs, votes, True)[0], usage)
        if comp.top_logprobs:
            p = p_first_from_top(comp.top_logprobs[0], options)
            if p is not None:
                return {"p": p, "method": "logprobs"}
    return await ask_votes(engine, role, msgs, votes, usage, options)
