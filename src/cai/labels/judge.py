"""The pairwise judge: which of two responses is better under a comparison principle, as a soft label.

One code path for labeling runs, labeling files and `cai judge-eval`. A pair is asked in both orders
(each response once as (A)); P(first ≻ second) = (p_AB + 1 − p_BA) / 2, where p_XY is the judge's P(A) with X
shown as (A). P(A) comes from `cai.core.choice`, the same path the rule-based grader uses: the answer token's top
logprobs (mass of "A"-like tokens over A-like + B-like) when the model has them, else `votes` sampled answers.

With `cot`, the judge reasons first and ends with "Answer: A|B"; P(A) is read at that answer token (or from
sampled answers), then clamped to [0.4, 0.6]: as the Constitutional AI paper found, reasoning makes the
answer nearly certain either way, so its probability says little about the strength of the preference.
"""

from __future__ import annotations

import asyncio
from typing import Any

from cai.calls import GenConfig, Message, Request
from cai.core.choice import (
    A_B,
    ANSWER_MARKER,
    Reading,
    Usage,
    answer_after,
    ask,
    counted_call,
    p_first_at_answer,
    planned,
    vote_requests,
)
from cai.core.engine import Engine
from cai.core.stages import conversation, quote
from cai.prompts import render

ONE_LETTER = "Answer with one letter: A or B."
REASON_FIRST = ("First think it through in a few sentences: how well does each response meet this principle? "
                "Then end with one line of the form \"Answer: A\" or \"Answer: B\".")
COT_MAX_TOKENS = 384
COT_CLAMP = (0.4, 0.6)
COT_LOGPROB_CONFIG = GenConfig(max_tokens=COT_MAX_TOKENS, temperature=0.0, top_logprobs=10, seed=0)


def judge_messages(messages: list[Message], first: str, second: str, question: str,
                   cot: bool = False) -> tuple[Message, ...]:
    """The judge's chat: the conversation, `first` as (A) and `second` as (B), each between its own markers
    (they depend on the text, so a response cannot close them), then the principle's question."""
    a, b = quote(first), quote(second)
    user = render("judge", conversation=conversation(messages), open_a=a["open"], close_a=a["close"],
                  response_a=a["response"], open_b=b["open"], close_b=b["close"], response_b=b["response"],
                  question=question, instruction=REASON_FIRST if cot else ONE_LETTER)
    return ({"role": "system", "content": render("judge_system")}, {"role": "user", "content": user})


def _clamp(p: float) -> float:
    return min(max(p, COT_CLAMP[0]), COT_CLAMP[1])


async def p_a(engine: Engine, role: str, msgs: tuple[Message, ...], votes: int, usage: Usage,
              cot: bool = False) -> Reading:
    """The judge's P(A) for one order (see the module docstring); method `none` (P = 0.5) when unreadable."""
    if not cot:
        return await ask(engine, role, msgs, votes, usage, options=A_B)
    if engine.models[role].supports_logprobs:
        comp = await counted_call(engine, role, Request(messages=msgs, config=COT_LOGPROB_CONFIG), usage)
        p = p_first_at_answer(comp.top_logprobs or [], comp.text, ANSWER_MARKER, A_B)
        if p is not None:
            return {"p": _clamp(p), "method": "logprobs"}
    reqs = vote_requests(msgs, votes, COT_MAX_TOKENS)
    comps = await asyncio.gather(*(counted_call(engine, role, r, usage) for r in reqs))
    answers = [a for a in (answer_after(c.text, ANSWER_MARKER, A_B) for c in comps) if a is not None]
    if not answers:
        return {"p": 0.5, "method": "none"}
    return {"p": _clamp(sum(answers) / len(answers)), "method": "votes"}


async def judge_pair(engine: Engine, role: str, messages: list[Message], first: str, second: str, question: str,
                     *, votes: int = 3, cot: bool = False, usage: Usage | None = None) -> dict[str, Any]:
    """`{"p_ab", "p_ba", "p", "method"}` for `first` vs `second`: p_ab = P(A) with `first` as (A), p_ba = P(A)
    with `second` as (A), p = P(first ≻ second) averaged over both orders; `method` is the two orders'
    methods when they differ ("logprobs/votes")."""
    usage = usage if usage is not None else Usage()
    ab, ba = await asyncio.gather(
        p_a(engine, role, judge_messages(messages, first, second, question, cot), votes, usage, cot),
        p_a(engine, role, judge_messages(messages, second, first, question, cot), votes, usage, cot))
    method = ab["method"] if ab["method"] == ba["method"] else f"{ab['method']}/{ba['method']}"
    return {"p_ab": ab["p"], "p_ba": ba["p"], "p": (ab["p"] + 1.0 - ba["p"]) / 2.0, "method": method}


def pair_requests(messages: list[Message], first: str, second: str, question: str, *, votes: int = 3,
                  cot: bool = False, logprobs: bool = True) -> list[Request]:
    """The requests `judge_pair` sends for one pair, both orders, to a judge with (or without) logprobs, when
    its answers can be read (`cai estimate`)."""
    out: list[Request] = []
    for a, b in ((first, second), (second, first)):
        msgs = judge_messages(messages, a, b, question, cot)
        if not cot:
            out += planned(msgs, votes, logprobs)
        else:
            out += [Request(messages=msgs, config=COT_LOGPROB_CONFIG)] if logprobs else vote_requests(
                msgs, votes, COT_MAX_TOKENS)
    return out
