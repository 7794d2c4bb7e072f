"""Which records a reviewer sees on the review page, and in what order.

The queue is built once, when the page starts, from one pass over the run (`entries`): each done record that has
something to review (a critique, a revision pair, an AI-labeled pair) becomes an `Entry`. `build_queue` then
filters (`--only`), samples (`--sample N`: seeded, stratified by the principle of the record's first critique
round), leaves out records other people already reviewed (work is split), and with `--overlap K` puts K of those
back, at seeded places, so that agreement between people can be measured. The same run, seed, sample and filters
give the same queue; the page opens at the first record this reviewer has not finished.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from cai.errors import InputError
from cai.read.reviews import Items, Key, record_items
from cai.read.rows import RecordRows
from cai.store.reviews import StoredDecision

ONLY_FORMS = "principle=ID, violated or ai_label"
NO_PRINCIPLE = "(no critique)"


@dataclass(frozen=True)
class Entry:
    """A reviewable record: its id, the principle of its first critique round (`stratum`), every principle it
    was critiqued on, whether the critic found a violation, whether it has AI-labeled pairs, and its items."""

    id: str
    stratum: str
    principles: frozenset[str]
    violated: bool
    ai_label: bool
    keys: tuple[Key, ...]


def entry_of(r: RecordRows) -> Entry:
    """The queue entry of one record's rows."""
    crit = [c.row for c in r.critiques]
    return Entry(id=r.record.id, stratum=crit[0]["principle"] if crit else NO_PRINCIPLE,
                 principles=frozenset(c["principle"] for c in crit),
                 violated=any(bool(c["verdict"] and c["verdict"].get("violates")) for c in crit),
                 ai_label=bool(r.labels and r.labels.pairs), keys=tuple(record_items(r)))


def entries(rows: Iterable[RecordRows]) -> tuple[list[Entry], Items]:
    """The entries of every done record with something to review, in input order, and the items of them all."""
    items, out = Items(), []
    for r in rows:
        if not r.record.done:
            continue
        items.add(r)
        e = entry_of(r)
        if e.keys:
            out.append(e)
    return out, items


def parse_only(only: Sequence[str]) -> list[tuple[str, str]]:
    """`--only` values as (what, value) filters; InputError (one line) for one of another form."""
    out = []
    for spec in only:
        what, eq, value = spec.partition("=")
        if (what == "principle" and eq and value) or (what in ("violated", "ai_label") and not eq):
            out.append((what, value))
        else:
            raise InputError(f"--only {spec!r}: expected {ONLY_FORMS}")
    return out


def matches(e: Entry, filters: Sequence[tuple[str, str]]) -> bool:
    """Whether `e` passes every filter (a critique on the principle; a violation found; AI-labeled pairs)."""
    for what, value in filters:
        if (what == "principle" and value not in e.principles) or (what == "violated" and not e.violated) or \
                (what == "ai_label" and not e.ai_label):
            return False
    return True


def stratified_sample(pool: Sequence[Entry], n: int, seed: int) -> list[Entry]:
    """`n` entries of `pool`, as evenly spread over the strata (principles) as their sizes allow: each stratum
    shuffled with the seed, then taken in turn, one from each, the strata in a seeded order. Fewer if the pool
    is."""
    rng = random.Random(f"cai-review-sample:{seed}")
    strata: dict[str, list[Entry]] = {}
    for e in pool:
        strata.setdefault(e.stratum, []).append(e)
    shuffled = []
    for name in sorted(strata):
        group = list(strata[name])
        rng.shuffle(group)
        shuffled.append(group)
    rng.shuffle(shuffled)
    out: list[Entry] = []
    depth = 0
    while len(out) < n and any(depth < len(g) for g in shuffled):
        out += [g[depth] for g in shuffled if depth < len(g)][: n - len(out)]
        depth += 1
    return out


def reviewed_by(decisions: Iterable[StoredDecision], items: Items) -> dict[str, set[str]]:
    """Reviewer → the records they hold a current (not stale) decision on."""
    out: dict[str, set[str]] = {}
    for d in decisions:
        if not items.stale(d):
            out.setdefault(d.reviewer, set()).add(d.id)
    return out


def build_queue(pool: Sequence[Entry], decisions: Sequence[StoredDecision], items: Items, reviewer: str, *,
                sample: int | None = None, seed: int = 0, only: Sequence[str] = (), overlap: int = 0) -> list[Entry]:
    """The reviewer's queue (see the module docstring). A record this reviewer already decided on stays in it."""
    if sample is not None and sample < 1:
        raise InputError(f"--sample must be 1 or more, not {sample}")
    if overlap < 0:
        raise InputError(f"--overlap must be 0 or more, not {overlap}")
    filters = parse_only(only)
    chosen = [e for e in pool if matches(e, filters)]
    base = stratified_sample(chosen, sample, seed) if sample is not None else chosen
    by = reviewed_by(decisions, items)
    mine = by.get(reviewer, set())
    others = set().union(*(ids for who, ids in by.items() if who != reviewer))
    queue = [e for e in base if e.id not in others or e.id in mine]
    return with_overlap(queue, [e for e in chosen if e.id in others], mine, overlap, seed)


def with_overlap(queue: list[Entry], reviewed: Sequence[Entry], mine: set[str], k: int, seed: int) -> list[Entry]:
    """`queue` with `k` of the `reviewed` records (reviewed by others; those this reviewer did first) put at seeded
    places."""
    if k == 0:
        return queue
    rng = random.Random(f"cai-review-overlap:{seed}")
    taken = {e.id for e in queue}
    candidates = [e for e in reviewed if e.id not in taken]
    done = [e for e in candidates if e.id in mine]
    fresh = [e for e in candidates if e.id not in mine]
    picks = done[:k] + rng.sample(fresh, min(len(fresh), max(0, k - len(done))))
    out = list(queue)
    for e in picks:
        out.insert(rng.randrange(len(out) + 1), e)
    return out


def finished(e: Entry, mine: dict[Key, StoredDecision], items: Items) -> bool:
    """Whether the reviewer holds a current decision on every item of `e`."""
    return all(k in mine and not items.stale(mine[k]) for k in e.keys)
