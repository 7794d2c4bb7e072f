"""Seeded choices from a constitution: the critique principles of a record, the comparison principle of a pair."""

from __future__ import annotations

import hashlib
import json
import random

from cai.constitution.model import ComparisonPrinciple, Constitution, Principle
from cai.errors import InputError


def sample_principles(const: Constitution, seed: int | None, messages: list[dict[str, str]],
                      rounds: int) -> list[Principle]:
    """One principle per round from the active ones (switched-off defaults left out); the same seed and prompt
    always give the same principles."""
    blob = json.dumps([seed, messages], sort_keys=True, ensure_ascii=False)
    rng = random.Random(hashlib.sha256(blob.encode()).hexdigest())
    pool = const.active
    if rounds <= len(pool):
        return rng.sample(pool, rounds)
    return [rng.choice(pool) for _ in range(rounds)]


def sample_comparison(const: Constitution, seed: int | None, messages: list[dict[str, str]],
                      pair: tuple[int, int]) -> ComparisonPrinciple:
    """The comparison principle for one pair of candidates of a prompt; the same seed, prompt and pair (in
    either order) always give the same principle."""
    if not const.comparisons:
        raise InputError(f"constitution {const.name!r} has no comparison principles for preference labels; "
                         "add a `comparisons:` section (a list of {id, question, tags})", path=const.path or None)
    blob = json.dumps([seed, messages, sorted(pair)], sort_keys=True, ensure_ascii=False)
    rng = random.Random(hashlib.sha256(blob.encode()).hexdigest())
    return rng.choice(const.comparisons)
