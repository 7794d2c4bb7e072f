"""How far people agree with the critic, the judge and each other: `review_stats` over plain inputs (lists of
dicts or DataFrames), pure, no run folder. docs/review_stats.md defines every number.

Inputs (extra keys and columns are ignored):
- decisions: one per reviewer decision, as `Run.reviews()`: id (record), item ("critique" | "pair"), round
  (critiques), pair (AI-labeled pairs: the candidates, "<chosen>><rejected>" as in the pair id after "<record
  id>:", e.g. "sample2>draft0"; the full pair id works too; empty for a record's revision pair), decision,
  reviewer, time (ordering a reviewer's repeated decisions on one item; the latest counts), stale.
- critiques: as `Run.critiques()`: id, round, principle, violates (True, False or None when unparsed).
- pairs: as `Run.pairs()`: id (the pair id), source ("revision" or "ai_label"; absent: revision) and label
  (AI-labeled pairs: a dict with p_chosen_first and p_chosen_second).
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Hashable, Iterable
from typing import Any

from cai.read.measures import cohen_kappa, krippendorff_alpha, observed_agreement, share

CRITIQUE_DECISIONS = ("agree", "disagree")
PAIR_DECISIONS = ("chosen", "rejected", "tie", "both_bad")
# Bins of the judge's confidence |P − 0.5|: [lo, hi), the last one closed.
CONFIDENCE_BINS = ((0.0, 0.1), (0.1, 0.2), (0.2, 0.3), (0.3, 0.5))

Key = tuple[str, Hashable]  # (item, what it is about: see `decision_key`)


def review_stats(decisions: Any, critiques: Any = (), pairs: Any = ()) -> dict[str, Any]:
    """Every agreement number of docs/review_stats.md as a JSON-ready dict: `decisions` (counts: total, used,
    stale, superseded, unmatched), `critic`, `revision`, `judge` and `reviewers`."""
    rows = _records(decisions)
    stale = [not _missing(d.get("stale")) and bool(d["stale"]) for d in rows]
    current, superseded = _latest(d for d, s in zip(rows, stale, strict=True) if not s)
    crit_rows, pair_rows = _index_critiques(_records(critiques)), _index_pairs(_records(pairs))
    critic, unmatched_c = critic_precision(current, crit_rows)
    judge, unmatched_p = judge_agreement(current, pair_rows)
    return {
        "decisions": {"total": len(rows), "used": sum(len(by) for by in current.values()), "stale": sum(stale),
                      "superseded": superseded, "unmatched": unmatched_c + unmatched_p},
        "critic": critic,
        "revision": revision_preference(current, pair_rows),
        "judge": judge,
        "reviewers": {"critique": reviewer_agreement(current, "critique"),
                      "pair": reviewer_agreement(current, "pair")},
    }


def critic_precision(decisions: dict[Key, dict[str, str]], critiques: dict[Hashable, dict[str, Any]]
                     ) -> tuple[dict[str, Any], int]:
    """Per principle and overall: the share of "violates" verdicts people agreed with and of "no violation"
    verdicts people agreed with (one count per reviewer's decision), and how many decisions matched no critique
    (returned second). Critiques without a parsed verdict are counted as `no_verdict`."""
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    unmatched = no_verdict = 0
    for (item, key), by in decisions.items():
        if item != "critique":
            continue
        crit = critiques.get(key)
        if crit is None:
            unmatched += len(by)
            continue
        if _missing(crit.get("violates")):
            no_verdict += len(by)
            continue
        side = "violates" if crit["violates"] else "no_violation"
        for decision in by.values():
            _check(decision, CRITIQUE_DECISIONS, "critique")
            for principle in (str(crit.get("principle")), "*"):
                counts[principle][side + ":n"] += 1
                counts[principle][side + ":k"] += decision == "agree"

    def block(c: Counter[str]) -> dict[str, Any]:
        return {side: share(c[side + ":k"], c[side + ":n"]) for side in ("violates", "no_violation")}

    principles = {p: block(c) for p, c in sorted(counts.items()) if p != "*"}
    return {"overall": block(counts["*"]), "by_principle": principles, "no_verdict": no_verdict}, unmatched


def revision_preference(decisions: dict[Key, dict[str, str]], pairs: dict[Hashable, dict[str, Any]]
                        ) -> dict[str, Any]:
    """On revision pairs (draft → final): the share of decisions preferring the revision (`chosen`) among all
    decisions on such pairs, with each decision's count (`rejected`: the draft was better)."""
    counts: Counter[str] = Counter()
    for (item, key), by in decisions.items():
        if item != "pair" or key[0] != "revision":
            continue
        for decision in by.values():
            _check(decision, PAIR_DECISIONS, "pair")
            counts[decision] += 1
    n = sum(counts.values())
    return {"preferred_revision": share(counts["chosen"], n), **{d: counts[d] for d in PAIR_DECISIONS}}


def judge_agreement(decisions: dict[Key, dict[str, str]], pairs: dict[Hashable, dict[str, Any]]
                    ) -> tuple[dict[str, Any], int]:
    """On AI-labeled pairs: the share of decisive human decisions (chosen / rejected) that side with the judge's
    pick (chosen when P(chosen ≻ rejected) > 0.5, rejected when < 0.5), overall and by confidence bin; ties,
    both_bad and undecided judges (P = 0.5 or unknown) counted apart. Returns the decisions on AI-labeled pair
    ids that match no pair second."""
    counts: Counter[str] = Counter()
    bins: list[Counter[str]] = [Counter() for _ in CONFIDENCE_BINS]
    unmatched = 0
    for (item, key), by in decisions.items():
        if item != "pair" or key[0] != "ai_label":
            continue
        row = pairs.get(key[1])
        if row is None or row.get("source") != "ai_label":
            unmatched += len(by)
            continue
        p = judge_probability(row.get("label"))
        for decision in by.values():
            _check(decision, PAIR_DECISIONS, "pair")
            if decision in ("tie", "both_bad"):
                counts[decision] += 1
            elif p is None or p == 0.5:
                counts["undecided"] += 1
            else:
                agreed = (decision == "chosen") == (p > 0.5)
                b = bins[_bin(abs(p - 0.5))]
                for c in (counts, b):
                    c["n"] += 1
                    c["k"] += agreed
    by_bin = [{"confidence": [lo, hi], **share(b["k"], b["n"])} for (lo, hi), b in zip(CONFIDENCE_BINS, bins,
                                                                                       strict=True)]
    return {"agreement": share(counts["k"], counts["n"]), "by_confidence": by_bin, "tie": counts["tie"],
            "both_bad": counts["both_bad"], "undecided": counts["undecided"]}, unmatched


def judge_probability(label: Any) -> float | None:
    """The judge's P(chosen ≻ rejected) of an AI-labeled pair: the mean of its two orders' P (one where only one
    is known), None without either."""
    if not isinstance(label, dict):
        return None
    ps = [float(label[k]) for k in ("p_chosen_first", "p_chosen_second") if not _missing(label.get(k))]
    return sum(ps) / len(ps) if ps else None


def reviewer_agreement(decisions: dict[Key, dict[str, str]], item: str) -> dict[str, Any]:
    """Agreement between reviewers on the items of one kind that two or more of them decided: how many such
    items and reviewers, the observed share of agreeing pairs of decisions, Cohen's kappa (exactly two
    reviewers) or Krippendorff's alpha (nominal, missing decisions allowed; three reviewers or more)."""
    units = [by for (kind, _), by in sorted(decisions.items(), key=lambda kv: repr(kv[0])) if kind == item
             and len(by) >= 2]
    reviewers = sorted({r for u in units for r in u})
    kappa = alpha = None
    if len(reviewers) == 2:
        a, b = reviewers
        kappa = cohen_kappa([u[a] for u in units], [u[b] for u in units])
    elif len(reviewers) > 2:
        alpha = krippendorff_alpha(units)
    return {"items": len(units), "reviewers": reviewers, "observed": observed_agreement(units),
            "kappa": kappa, "alpha": alpha}


def _latest(rows: Iterable[dict[str, Any]]) -> tuple[dict[Key, dict[str, str]], int]:
    """{(item, key): {reviewer: decision}} keeping each reviewer's latest decision per item (by time, then
    input order), and how many earlier ones it left out."""
    ordered = sorted(enumerate(rows), key=lambda ir: ("" if _missing(ir[1].get("time")) else str(ir[1]["time"]),
                                                      ir[0]))
    out: dict[Key, dict[str, str]] = defaultdict(dict)
    seen = 0
    for _, d in ordered:
        seen += 1
        out[(str(d["item"]), decision_key(d))][str(d.get("reviewer"))] = str(d["decision"])
    return dict(out), seen - sum(len(by) for by in out.values())


def decision_key(d: dict[str, Any]) -> Hashable:
    """What a decision is about: (record id, round) for a critique; for a pair, its source and id: ("revision",
    record id) for a record's revision pair, ("ai_label", "<record id>:<pair>") for an AI-labeled pair."""
    rid = str(d["id"])
    if d["item"] == "critique":
        return (rid, int(d["round"]))
    pair = d.get("pair")
    if _missing(pair) or pair == "":
        return ("revision", rid)
    pair = str(pair)
    return ("ai_label", pair if pair.startswith(rid + ":") else f"{rid}:{pair}")


def _index_critiques(rows: list[dict[str, Any]]) -> dict[Hashable, dict[str, Any]]:
    return {(str(r["id"]), int(r["round"])): r for r in rows}


def _index_pairs(rows: list[dict[str, Any]]) -> dict[Hashable, dict[str, Any]]:
    return {str(r["id"]): r for r in rows}


def _records(data: Any) -> list[dict[str, Any]]:
    """A DataFrame's rows or an iterable's dicts, as a list of dicts."""
    if hasattr(data, "to_dict"):
        return data.to_dict("records")
    return [dict(r) for r in data]


def _missing(v: Any) -> bool:
    """None or a pandas/NumPy NaN."""
    return v is None or (isinstance(v, float) and math.isnan(v))


def _bin(confidence: float) -> int:
    c = round(confidence, 12)
    return next((i for i, (_, hi) in enumerate(CONFIDENCE_BINS[:-1]) if c < hi), len(CONFIDENCE_BINS) - 1)


def _check(decision: str, allowed: tuple[str, ...], item: str) -> None:
    if decision not in allowed:
        raise ValueError(f"a {item} decision is one of {', '.join(allowed)}, not {decision!r}")
