"""One record as the JSON the review page shows: the prompt, the draft, each critique (verdict, principle, layer,
kind) with its revision as a word diff against the text before it, the revision pair with the quality gate's
flags, the AI-labeled pairs with the judge's confidence, and the decision targets with this reviewer's own
decisions (never anyone else's). Made from one record's rows (`cai.read.rows.RecordRows`), the one read model.
"""

from __future__ import annotations

from typing import Any

from cai.read.explore import word_diff
from cai.read.reviews import Items, Key, record_items
from cai.read.reviews import revision_pair as reviewable_pair
from cai.read.rows import RecordRows
from cai.store.reviews import StoredDecision


def _verdict(v: Any) -> dict[str, Any] | None:
    return {"flags": list(v.flags), "kept": v.kept, "out": list(v.out)} if v is not None else None


def critiques(r: RecordRows) -> list[dict[str, Any]]:
    """Each critique round: the critic's verdict and the principle, the response it judged, and the revision that
    answered it as a word diff of that response (None where it was not revised)."""
    out = []
    for c in r.critiques:
        row, v = c.row, c.row["verdict"] or {}
        out.append({"round": row["round"], "principle": row["principle"], "layer": row["layer"], "kind": row["kind"],
                    "critique": row["critique"], "violates": v.get("violates"), "severity": v.get("severity"),
                    "parsed": row["parsed"], "before": row["before"],
                    "diff": word_diff(row["before"], row["after"]) if c.revision is not None else None})
    return out


def revision_pair(r: RecordRows) -> dict[str, Any] | None:
    """The final revision (chosen) against the draft (rejected), with the quality gate's verdict; None without one
    to review."""
    if (texts := reviewable_pair(r)) is None:
        return None
    chosen, rejected = texts
    return {"chosen": chosen, "rejected": rejected, "diff": word_diff(rejected, chosen),
            "quality": _verdict(r.pair_verdict), "dropped": r.dropped}


def ai_pairs(r: RecordRows) -> list[dict[str, Any]]:
    """The record's AI-labeled pairs as exported, each with the judge's confidence: the margin and P(chosen
    wins) in each order it was shown."""
    out = []
    for p in r.labels.pairs if r.labels is not None else ():
        label = p["label"] or {}
        first, second = label.get("p_chosen_first"), label.get("p_chosen_second")
        out.append({"pair": p["id"], "chosen": p["chosen"][0]["content"], "rejected": p["rejected"][0]["content"],
                    "margin": label.get("margin"), "p_chosen_first": first, "p_chosen_second": second,
                    "p": (first + second) / 2 if first is not None and second is not None else None,
                    "judge": label.get("judge"), "method": label.get("method"), "principle": label.get("principle"),
                    "score_chosen": p.get("score_chosen"), "score_rejected": p.get("score_rejected"),
                    "quality": list(p.get("quality") or [])})
    return out


def mine_json(d: StoredDecision | None, stale: bool) -> dict[str, Any] | None:
    """The reviewer's own decision on an item as the page shows it."""
    if d is None:
        return None
    return {"decision": d.decision, "edit": d.edit, "note": d.note, "time": d.time, "stale": stale}


def targets(r: RecordRows, mine: dict[Key, StoredDecision]) -> list[dict[str, Any]]:
    """The decision targets of the record, in order, each with the reviewer's decision on it (stale or not)."""
    current = Items([r])
    out = []
    for key in record_items(r):
        item, _, rnd, pair = key
        d = mine.get(key)
        out.append({"item": item, "round": rnd if item == "critique" else None, "pair": pair or None,
                    "mine": mine_json(d, d is not None and current.stale(d))})
    return out


def record_json(r: RecordRows, mine: dict[Key, StoredDecision]) -> dict[str, Any]:
    """Everything the page shows of one record."""
    rec = r.record
    return {"id": rec.id, "status": rec.status,
            "prompt": [{"role": m["role"], "content": m["content"]} for m in rec.messages],
            "draft": r.draft, "final": r.final, "critiques": critiques(r), "revision_pair": revision_pair(r),
            "ai_pairs": ai_pairs(r), "targets": targets(r, mine)}
