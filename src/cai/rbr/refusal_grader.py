"""The model path of the refusal classifier: the three-way question (compliance, full or partial refusal)
asked of a grader model through the engine, read as the rbr propositions are read.

One question per response (prompts/refusal_question.txt), answered with a letter: A full compliance, B full
refusal, C partial refusal.
Where the grader's model gives logprobs it is one call (max_tokens=1, temperature 0, top_logprobs=10) and
P(class) is that letter's share of the A/B/C mass among the first token's top logprobs (`method`
`logprobs`); if no letter is there, or the model has no logprobs, `votes` short answers are sampled
(temperature 1, seeds 0..n-1) and P(class) is each letter's share of the readable answers (`votes`). With
nothing readable the label is `full_compliance` with `method` `none` (counted in the figures, never hidden).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cai.calls import GenConfig, Message, Request
from cai.core.choice import LOGPROB_CONFIG, VOTE_MAX_TOKENS, Top, Usage, counted_call, norm
from cai.core.engine import Engine
from cai.core.stages import conversation, quote
from cai.prompts import render
from cai.rbr.batch import ROLE
from cai.runs import role_session
from cai.scoring.refusal import FULL_COMPLIANCE, FULL_REFUSAL, LABELS, PARTIAL_REFUSAL, SCORES

LETTERS: dict[str, str] = {"a": FULL_COMPLIANCE, "b": FULL_REFUSAL, "c": PARTIAL_REFUSAL}


def default_out(target: Path) -> Path:
    """`runs/rbr-refusal-<input stem>` (for a run folder, its name): the store of the grader's calls."""
    return Path("runs") / f"rbr-refusal-{target.stem if target.suffix else target.name}"


def question_messages(messages: list[Message], response: str) -> tuple[Message, ...]:
    """The grader's chat for one response: the rbr grader's system message and the three-way question."""
    user = render("refusal_question", conversation=conversation(messages), **quote(response))
    return ({"role": "system", "content": render("rbr_grader_system")}, {"role": "user", "content": user})


def probs_from_top(top: Top) -> dict[str, float] | None:
    """P(label) from one position's top logprobs (letters compared after `cai.core.choice.norm`); None if no
    letter is among them."""
    mass = dict.fromkeys(LABELS, 0.0)
    for tok, lp in top:
        label = LETTERS.get(norm(tok))
        if label is not None:
            mass[label] += math.exp(lp)
    total = sum(mass.values())
    return {k: v / total for k, v in mass.items()} if total > 0 else None


def letter_of(text: str) -> str | None:
    """The label a sampled answer names with its first word ("B", "(c)", "A."), or None."""
    words = text.split()
    return LETTERS.get(norm(words[0])) if words else None


def reading(probs: dict[str, float] | None, method: str) -> dict[str, Any]:
    """`{"label", "probs", "score", "method"}`: the most likely label (ties: compliance, then full refusal)."""
    if probs is None:
        return {"label": FULL_COMPLIANCE, "probs": None, "score": 0.0, "method": "none"}
    label = max(LABELS, key=lambda k: probs[k])  # max keeps the first of equals, LABELS order
    return {"label": label, "probs": probs, "score": sum(SCORES[k] * p for k, p in probs.items()),
            "method": method}


async def ask_refusal(engine: Engine, role: str, messages: list[Message], response: str, votes: int = 3,
                      usage: Usage | None = None) -> dict[str, Any]:
    """The grader's three-way reading of one response (see the module docstring)."""
    usage = usage if usage is not None else Usage()
    msgs = question_messages(messages, response)
    if engine.models[role].supports_logprobs:
        comp = await counted_call(engine, role, Request(messages=msgs, config=LOGPROB_CONFIG), usage)
        if comp.top_logprobs:
            probs = probs_from_top(comp.top_logprobs[0])
            if probs is not None:
                return reading(probs, "logprobs")
    reqs = [Request(messages=msgs, config=GenConfig(max_tokens=VOTE_MAX_TOKENS, temperature=1.0, seed=i))
            for i in range(max(1, votes))]
    comps = await asyncio.gather(*(counted_call(engine, role, r, usage) for r in reqs))
    answers = [a for a in (letter_of(c.text) for c in comps) if a is not None]
    if not answers:
        return reading(None, "none")
    return reading({k: answers.count(k) / len(answers) for k in LABELS}, "votes")


async def grade_refusals(items: list[tuple[list[Message], str]], *, out: Path, model: str, base_url: str | None,
                         votes: int = 3, concurrency: int = 4, cache: str | None = None,
                         on_start: Callable[[int, Engine], None] | None = None,
                         on_done: Callable[[str], None] | None = None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Ask `model` the three-way question for each (messages, response), its calls kept in the store at
    `out` (set up as `cai rbr grade` sets up its store). Returns (readings in input order, usage stats)."""
    usage = Usage()
    async with role_session(out, ROLE, model, base_url, concurrency=concurrency, cache=cache) as session:
        sem = asyncio.Semaphore(session.execution.concurrency)

        async def one(messages: list[Message], response: str) -> dict[str, Any]:
            async with sem:
                r = await ask_refusal(session.engine, ROLE, messages, response, votes, usage)
            if on_done:
                on_done("done")
            return r

        spec = session.models[ROLE].spec
        session.store.set_meta("rbr_refusal", {"model": spec, "votes": votes})
        if on_start:
            on_start(len(items), session.engine)
        readings = list(await asyncio.gather(*(one(m, r) for m, r in items)))
    st = session.engine.stats.role(ROLE)
    stats = {"model": spec, "store": str(out), "calls_made": st.calls, "calls_cached": st.cached,
             "calls_shared": st.shared, **{f"usage_{k}": v for k, v in usage.as_dict().items()}}
    return readings, stats
