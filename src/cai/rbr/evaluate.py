"""Grader quality against human labels: per-proposition accuracy, precision, recall, F1 and AUC.

A prediction is P(yes) >= 0.5. AUC is computed from the probabilities with average ranks (ties
share a rank); it is null when a proposition's labels are all one value. Precision, recall and F1 are
null when undefined (nothing predicted positive, no positive labels).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from cai.rbr.rules import THRESHOLD


def average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of `x`, ties given their mean rank."""
    order = np.argsort(x, kind="mergesort")
    sx = x[order]
    ranks = np.empty(len(x), dtype=float)
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and sx[j + 1] == sx[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def auc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """Area under the ROC curve (Mann-Whitney U over n_pos * n_neg); None for a single class."""
    labels = labels.astype(bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    r = average_ranks(scores.astype(float))
    return float((r[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def binary_metrics(labels: np.ndarray, probs: np.ndarray, threshold: float = THRESHOLD) -> dict[str, Any]:
    y = labels.astype(bool)
    pred = probs >= threshold
    tp, fp = int((pred & y).sum()), int((pred & ~y).sum())
    fn = int((~pred & y).sum())
    precision = tp / (tp + fp) if tp + fp else None
    recall = tp / (tp + fn) if tp + fn else None
    f1 = (2 * precision * recall / (precision + recall) if precision is not None and recall is not None
          and precision + recall > 0 else (0.0 if precision is not None and recall is not None else None))
    return {"n": int(len(y)), "positives": int(y.sum()), "predicted_positive": int(pred.sum()),
            "accuracy": float((pred == y).mean()) if len(y) else None,
            "precision": precision, "recall": recall, "f1": f1, "auc": auc(y, probs)}


def evaluate(graded: list[dict[str, Any]]) -> dict[str, Any]:
    """Metrics for graded rows that carry human `labels` (proposition → bool)."""
    per: dict[str, tuple[list[bool], list[float]]] = {}
    methods: Counter[str] = Counter()
    for row in graded:
        labels = row.get("labels") or {}
        for pid, score in row.get("propositions", {}).items():
            if pid not in labels:
                continue
            ys, ps = per.setdefault(pid, ([], []))
            ys.append(bool(labels[pid]))
            ps.append(float(score["p_yes"]))
            methods[score.get("method", "?")] += 1
    props = {pid: binary_metrics(np.array(ys), np.array(ps)) for pid, (ys, ps) in sorted(per.items())}
    all_y = np.array([y for ys, _ in per.values() for y in ys], dtype=bool)
    all_p = np.array([p for _, ps in per.values() for p in ps], dtype=float)
    f1s = [m["f1"] for m in props.values() if m["f1"] is not None]
    aucs = [m["auc"] for m in props.values() if m["auc"] is not None]
    with_gold = [r for r in graded if r.get("gold_class")]
    overall = {"judgements": int(len(all_y)),
               "accuracy": float(((all_p >= THRESHOLD) == all_y).mean()) if len(all_y) else None,
               "macro_f1": float(np.mean(f1s)) if f1s else None,
               "macro_auc": float(np.mean(aucs)) if aucs else None,
               "class_agreement": (sum(r["class"] == r["gold_class"] for r in with_gold) / len(with_gold)
                                   if with_gold else None),
               "rows": len(graded), "methods": dict(methods)}
    return {"propositions": props, "overall": overall}
