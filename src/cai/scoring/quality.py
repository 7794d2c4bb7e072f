"""Quality gate: deterministic checks of a revision pair (chosen = final, rejected = draft) and of an SFT row.

Pure functions over `Evidence`, what the read model knows of one record: no store, no model call. Each check
is a public function with its thresholds as module constants; `strict=True` uses the tighter `STRICT_*` ones.
`pair_flags` and `sft_flags` name what is wrong (in `FLAGS` order); `kept` says whether a gate level lets the
row through. The thresholds and why: docs/export.md, "Quality gate".
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

from cai.scoring.refusal import FULL_COMPLIANCE, FULL_REFUSAL, classify, plain

FLAGS: tuple[str, ...] = ("empty", "unchanged", "truncated", "degenerate", "leak", "new_refusal",
                          "worse_by_reward", "worse_by_judge")
GATES: dict[str, frozenset[str]] = {
    "off": frozenset(),
    "default": frozenset({"empty", "unchanged", "truncated", "degenerate", "leak", "new_refusal"}),
    "strict": frozenset(FLAGS),
}

TRUNCATED_FINISH = frozenset({"length", "max_tokens", "max_output_tokens", "model_context_window_exceeded"})
"""finish_reason values (lower-cased) that mean the reply was cut off: OpenAI and llama.cpp say "length",
Anthropic "max_tokens" (or "model_context_window_exceeded")."""

LOOP_REPEATS, STRICT_LOOP_REPEATS = 3, 3
"""A run of words repeated back to back this many times ("it's not helpful. it's not helpful. it's …") is a loop…"""
LOOP_MIN_WORDS, STRICT_LOOP_MIN_WORDS = 12, 8
"""…when the repeats cover at least this many words ("very, very, very good" is no loop)."""
LOOP_MAX_PERIOD = 40
"""Longest repeated unit looked for, in words (a cycle of two or three sentences)."""
CLAUSE_MIN_WORDS = 3
"""Clauses (text between . ! ? ; : , or line breaks) shorter than this are not counted as repeats."""
REPEAT_SHARE, STRICT_REPEAT_SHARE = 0.4, 0.25
"""Share of a reply's words in clauses that repeat an earlier clause word for word, anywhere: at or above it,
the reply is mostly repeats."""

LEAK_RUN_WORDS, STRICT_LEAK_RUN_WORDS = 8, 6
"""Consecutive words shared with a critique (outside its quotes) or a principle, and not found in the prompt,
the draft or an earlier revision: copied instruction text."""
LEAK_WEAK_HITS, STRICT_LEAK_WEAK_HITS = 2, 1
"""Sentences that open by judging "the response" / "the answer" / "the assistant" ("The response is too
cold.") needed for a leak; one is common in legitimate text about, say, an HTTP response."""

JUDGE_TOLERANCE, STRICT_JUDGE_TOLERANCE = 0.05, 0.0
"""worse_by_judge: P(final ≻ draft) below 0.5 minus this."""
REWARD_TOLERANCE = 0.0
"""worse_by_reward: the final's reward below the draft's minus this (rewards have no fixed scale)."""

_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)*")
_FENCE = re.compile(r"```.*?(?:```|\Z)", re.S)
_CLAUSE_SPLIT = re.compile(r"[.!?;:,\n]+")
_LEADING = re.compile(r"^\W*(?:(?:and|but|or|so|then|also|because)\b\W*)+")  # "…, and X" repeats X
_SENTENCE_SPLIT = re.compile(r"(?<=[.!?:])\s+|\n+")
_QUOTED = re.compile(r'"[^"\n]{1,400}"|\u201c[^\u201d\n]{1,400}\u201d|(?<!\w)\'[^\'\n]{1,400}\'(?!\w)'
                     r"|\u2018[^\u2019\n]{1,400}\u2019")
_LABEL = re.compile(
    r"^\W*(?:(?:revised|rewritten|improved|updated|corrected|edited|new) (?:response|reply)"
    r"|revision(?: request)?|critique(?: request)?)\W*:"
    r"|\bhere(?: is|'s) (?:the |a |my )?(?:revised|rewritten|improved|updated|corrected) (?:version of the )?"
    r"(?:response|reply)\b",
    re.M)
_STRONG = re.compile(
    r"\bthe (?:user|human) (?:is (?:asking|requesting|looking for|seeking)|asks|asked (?:about|for|how|whether|if)"
    r"|wants to know|has asked)\b"
    r"|\bthe assistant ?'s (?:last |original |previous |initial )?(?:response|reply|answer)\b"
    r"|\bthe (?:critique|revision request|critique request) (?:says|said|points out|pointed out|notes|noted"
    r"|suggests|suggested|asks|asked|is right)\b")
_WEAK = re.compile(
    r"^\W*(?:(?:the|this|your) (?:original |previous |initial |first |last |revised )?(?:response|reply|answer|draft)"
    r"|the (?:assistant|ai)(?: ?'s (?:response|reply|answer))?)"
    r" (?:is (?:\w+ )?(?:too|not|overly|very|quite|rather|somewhat|unhelpful|helpful|harmful|inappropriate"
    r"|appropriate|preachy|condescending|dismissive|vague|off-topic|accurate|inaccurate|misleading|good|fine)"
    r"|does not|did not|fails|failed|should (?:not|instead|have|also|be more|be less|acknowledge|avoid|address)"
    r"|needs to|lacks|misread|misreads|misses|missed|ignores|ignored|violates|avoids|refuses|could be)\b")


@dataclass(frozen=True)
class Evidence:
    """What the read model knows of one pair / SFT row (chosen = final, rejected = draft)."""

    prompt: str  # the last user turn's text
    draft: str
    final: str
    draft_finish: str | None  # finish_reason of the draft call (None: unknown)
    final_finish: str | None
    critiques: tuple[str, ...] = ()  # critique texts of the rounds
    principles: tuple[str, ...] = ()  # the principle texts (critique/revision requests) used
    expected: str | None = None  # the input row's `expected` field
    reward_draft: float | None = None
    reward_final: float | None = None
    judge_p_final: float | None = None  # P(final ≻ draft) from AI labels, if any
    revisions: tuple[str, ...] = ()  # earlier rounds' revisions: text a critique may quote without it leaking

    def __post_init__(self) -> None:
        for name in ("critiques", "principles", "revisions"):  # lists too, kept hashable
            object.__setattr__(self, name, tuple(getattr(self, name)))


def is_truncated(finish: str | None) -> bool:
    """Whether a call's finish_reason says the token limit cut the reply off (None: unknown, not truncated)."""
    return finish is not None and finish.strip().lower() in TRUNCATED_FINISH


def is_empty(text: str) -> bool:
    """Blank: nothing but whitespace."""
    return not text.strip()


def _normal(text: str) -> str:
    """`text` lower-case, contractions spelled out (so "it's" and "it is" match), markdown and code blocks left out."""
    return plain(_FENCE.sub("\n", text))


def _words(text: str) -> list[str]:
    """The words of `text`, normalised (`_normal`)."""
    return _WORD.findall(_normal(text))


def loop_words(words: list[str], max_period: int = LOOP_MAX_PERIOD) -> tuple[int, int]:
    """The longest back-to-back repetition in `words`: (words it covers, length of the repeated unit)."""
    seen: dict[tuple[str, ...], int] = {}
    periods = set()  # distances between repeats of a 3-word run: the only units a loop can have
    for i in range(len(words) - 2):
        gram = tuple(words[i:i + 3])
        if gram in seen and i - seen[gram] <= max_period:
            periods.add(i - seen[gram])
        seen[gram] = i
    best = (0, 0)
    for k in sorted(periods):
        run = 0
        for i in range(len(words) - k):
            run = run + 1 if words[i] == words[i + k] else 0
            if run + k > best[0] and run >= k:
                best = (run + k, k)
    return best


def repeat_share(text: str) -> float:
    """Share of the words of `text` in clauses that repeat an earlier clause word for word."""
    return _repeat_share(_normal(text))


def _repeat_share(normal: str) -> float:
    clauses = [tuple(_WORD.findall(_LEADING.sub("", c))) for c in _CLAUSE_SPLIT.split(normal)]
    total = sum(len(c) for c in clauses)
    counts = Counter(c for c in clauses if len(c) >= CLAUSE_MIN_WORDS)
    return sum((n - 1) * len(c) for c, n in counts.items()) / total if total else 0.0


def degenerate(text: str, strict: bool = False) -> bool:
    """A repetition loop: a run of words repeated back to back (`LOOP_REPEATS` times over `LOOP_MIN_WORDS`
    words or more), or a reply mostly made of repeated clauses (`REPEAT_SHARE`). Fenced code is left out."""
    repeats, min_words, share = ((STRICT_LOOP_REPEATS, STRICT_LOOP_MIN_WORDS, STRICT_REPEAT_SHARE) if strict
                                 else (LOOP_REPEATS, LOOP_MIN_WORDS, REPEAT_SHARE))
    normal = _normal(text)
    covered, period = loop_words(_WORD.findall(normal))
    if period and covered >= min_words and covered >= repeats * period:
        return True
    return _repeat_share(normal) >= share


@lru_cache(maxsize=1024)  # principles, and a record's critiques, come back for every row checked
def _ngrams(text: str, n: int) -> frozenset[tuple[str, ...]]:
    """The runs of `n` words of `text`, within its sentences."""
    out: set[tuple[str, ...]] = set()
    for sentence in _SENTENCE_SPLIT.split(_normal(text)):
        words = _WORD.findall(sentence)
        out.update(tuple(words[i:i + n]) for i in range(len(words) - n + 1))
    return frozenset(out)


def copied(text: str, sources: Iterable[str], known: Iterable[str] = (), n: int = LEAK_RUN_WORDS) -> bool:
    """Whether `text` shares a run of `n` words (in one sentence) with one of `sources` (quoted spans in them
    left out) that is not in any of `known` (the prompt, the draft: what a source may legitimately quote)."""
    mine = _ngrams(text, n)
    if not mine:
        return False
    shared = mine & set().union(*(_ngrams(_QUOTED.sub("\n", s), n) for s in sources))
    return bool(shared) and bool(shared - set().union(*(_ngrams(k, n) for k in known)))


def meta_talk(text: str, strict: bool = False) -> bool:
    """Whether `text` speaks about the exchange instead of in it: a label ("Revised response:"), "the user is
    asking …", "the assistant's response …", or sentences that open by judging "the response"."""
    body = _normal(text)
    if _LABEL.search(body):
        return True
    if _STRONG.search(body):
        return True
    weak = sum(bool(_WEAK.search(s.strip())) for s in _SENTENCE_SPLIT.split(body))
    return weak >= (STRICT_LEAK_WEAK_HITS if strict else LEAK_WEAK_HITS)


def leaks(text: str, critiques: Iterable[str] = (), principles: Iterable[str] = (), draft: str = "",
          prompt: str = "", revisions: Iterable[str] = (), strict: bool = False) -> bool:
    """A revision that carries over critique or instruction text (`meta_talk`), or copies a run of words from a
    critique or a principle that neither the prompt, the draft nor an earlier revision has (`copied`)."""
    if is_empty(text):
        return False
    n = STRICT_LEAK_RUN_WORDS if strict else LEAK_RUN_WORDS
    return meta_talk(text, strict) or copied(text, [*critiques, *principles], [prompt, draft, *revisions], n)


def new_refusal(ev: Evidence, strict: bool = False) -> bool:
    """For an input row with `expected: comply`: the draft fully complies and the final refuses (a full refusal;
    strict: also a partial one), by the refusal classifier `cai.scoring.refusal`."""
    if ev.expected != "comply" or is_empty(ev.final):
        return False
    label = classify(ev.final, ev.prompt)
    refuses = label != FULL_COMPLIANCE if strict else label == FULL_REFUSAL
    return refuses and classify(ev.draft, ev.prompt) == FULL_COMPLIANCE


def worse_by_reward(reward_draft: float | None, reward_final: float | None) -> bool:
    """The final's reward below the draft's (False when either is unknown)."""
    return reward_draft is not None and reward_final is not None and reward_final < reward_draft - REWARD_TOLERANCE


def worse_by_judge(p_final: float | None, strict: bool = False) -> bool:
    """The judge preferred the draft: P(final ≻ draft) below 0.5 − `JUDGE_TOLERANCE` (False when unknown)."""
    return p_final is not None and p_final < 0.5 - (STRICT_JUDGE_TOLERANCE if strict else JUDGE_TOLERANCE)


@lru_cache(maxsize=64)  # pair_flags and sft_flags of the same record share it
def _final_flags(ev: Evidence, strict: bool) -> frozenset[str]:
    """Flags about the final response alone (and the refusal it may have added)."""
    found = set()
    if is_truncated(ev.final_finish):
        found.add("truncated")
    if degenerate(ev.final, strict):
        found.add("degenerate")
    if leaks(ev.final, ev.critiques, ev.principles, ev.draft, ev.prompt, ev.revisions, strict):
        found.add("leak")
    if new_refusal(ev, strict):
        found.add("new_refusal")
    return frozenset(found)


def pair_flags(ev: Evidence, strict: bool = False) -> tuple[str, ...]:
    """Flags of the revision pair (chosen = final, rejected = draft), in `FLAGS` order."""
    found = set(_final_flags(ev, strict))
    if is_empty(ev.final) or is_empty(ev.draft):
        found.add("empty")
    elif ev.final == ev.draft:
        found.add("unchanged")
    if is_truncated(ev.draft_finish):
        found.add("truncated")
    if worse_by_reward(ev.reward_draft, ev.reward_final):
        found.add("worse_by_reward")
    if worse_by_judge(ev.judge_p_final, strict):
        found.add("worse_by_judge")
    return tuple(f for f in FLAGS if f in found)


def sft_flags(ev: Evidence, strict: bool = False) -> tuple[str, ...]:
    """Flags of the SFT row (prompt + final), about the final only, in `FLAGS` order."""
    found = set(_final_flags(ev, strict))
    if is_empty(ev.final):
        found.add("empty")
    return tuple(f for f in FLAGS if f in found)


def kept(flags: Iterable[str], gate: str) -> bool:
    """Whether a row with these flags passes `gate` ("off", "default" or "strict")."""
    return not GATES[gate].intersection(flags)
