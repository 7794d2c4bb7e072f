"""Fit reward weights from graded responses with a hinge ranking loss (numpy, seeded).

Pairs: two responses of the same group (the same prompt by default, or the same response type with
`group_by="type"`) whose classes differ; the better class (`gold_class` if the row has one, else
`class`) must score higher by `margin`:

    loss(w) = mean over pairs of max(0, margin - w·(x_better - x_worse)) + l2 * |w|^2

One weight vector per response type, over the features (proposition P(yes) and check scores) found in
the rows. Rows are split into train and held-out by prompt, so no prompt is in both; pairwise accuracy
is the share of pairs the weights order correctly (ties count as wrong).
"""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

import numpy as np

from cai.constitution import CLASS_RANK
from cai.errors import InputError
from cai.rbr.reward import Weights, features_of

MAX_PAIRS = 20000  # per response type and split; a seeded sample beyond this


def row_class(row: dict[str, Any]) -> str | None:
    c = row.get("gold_class") or row.get("class")
    return c if c in CLASS_RANK else None


def row_features(row: dict[str, Any]) -> dict[str, float]:
    p_yes = {k: float(v["p_yes"]) for k, v in row.get("propositions", {}).items()}
    return features_of(p_yes, row.get("checks") or {})


def prompt_key(row: dict[str, Any]) -> str:
    return json.dumps(row.get("prompt"), sort_keys=True, ensure_ascii=False)


def split_by_prompt(rows: list[dict[str, Any]], holdout: float, seed: int) -> tuple[list[int], list[int]]:
    """Row indices (train, held-out); every prompt's rows land on one side."""
    keys = sorted({prompt_key(r) for r in rows})
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(keys))
    n_hold = int(round(holdout * len(keys))) if len(keys) > 1 else 0
    held = {keys[i] for i in order[:n_hold]}
    train = [i for i, r in enumerate(rows) if prompt_key(r) not in held]
    test = [i for i, r in enumerate(rows) if prompt_key(r) in held]
    return train, test


def make_pairs(rows: list[dict[str, Any]], idx: list[int], group_by: str,
               rng: np.random.Generator) -> dict[str, list[tuple[int, int]]]:
    """{response type: [(better row, worse row), ...]} within groups."""
    groups: dict[tuple[str, str], list[int]] = defaultdict(list)
    for i in idx:
        r = rows[i]
        if row_class(r) is None:
            continue
        key = prompt_key(r) if group_by == "prompt" else ""
        groups[(r["response_type"], key)].append(i)
    out: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for (rtype, _), members in sorted(groups.items()):
        for a in members:
            for b in members:
                if CLASS_RANK[row_class(rows[a])] > CLASS_RANK[row_class(rows[b])]:  # type: ignore[index]
                    out[rtype].append((a, b))
    for rtype, pairs in out.items():
        if len(pairs) > MAX_PAIRS:
            keep = rng.choice(len(pairs), MAX_PAIRS, replace=False)
            out[rtype] = [pairs[k] for k in sorted(keep)]
    return dict(out)


def no_pairs_message(group_by: str) -> str:
    """Why there is nothing to fit, with the way out that `group_by` leaves."""
    if group_by == "prompt":
        return ("no training pairs: need responses to the same prompt with different classes "
                "(try --group-by type)")
    return ("no training pairs: need responses of the same response type with different classes "
            f"(`gold_class` or `class`: {', '.join(CLASS_RANK)}) among the training rows")


def pair_diffs(X: np.ndarray, pairs: list[tuple[int, int]]) -> np.ndarray:
    return np.array([X[a] - X[b] for a, b in pairs]) if pairs else np.zeros((0, X.shape[1]))


def hinge_fit(D: np.ndarray, *, margin: float = 1.0, l2: float = 1e-3, steps: int = 1500, lr: float = 0.05,
              seed: int = 0) -> np.ndarray:
    """Minimise mean(max(0, margin - D @ w)) + l2 |w|^2 with Adam from a small seeded start."""
    rng = np.random.default_rng(seed)
    w = rng.normal(0.0, 0.01, D.shape[1])
    m, v = np.zeros_like(w), np.zeros_like(w)
    b1, b2, eps = 0.9, 0.999, 1e-8
    for t in range(1, steps + 1):
        active = (margin - D @ w) > 0
        grad = -D[active].sum(axis=0) / max(len(D), 1) + 2 * l2 * w
        m = b1 * m + (1 - b1) * grad
        v = b2 * v + (1 - b2) * grad ** 2
        step = lr / (1 + t / 500)
        w -= step * (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + eps)
    return w


def pairwise_accuracy(D: np.ndarray, w: np.ndarray) -> float | None:
    return float(np.mean(D @ w > 0)) if len(D) else None


def fit(rows: list[dict[str, Any]], *, margin: float = 1.0, l2: float = 1e-3, holdout: float = 0.2,
        seed: int = 0, group_by: str = "prompt", steps: int = 1500,
        init: Weights | None = None) -> dict[str, Any]:
    """Fit weights per response type. Returns {"weights", "types": {type: stats}, "train", "heldout"}.

    A type without training pairs keeps its `init` weights (if any). Stats per split: pairs, accuracy
    of the fitted weights and of uniform weights (every feature 1).
    """
    if group_by not in ("prompt", "type"):
        raise InputError(f"group_by must be prompt or type, not {group_by!r}")
    if not 0.0 <= holdout < 1.0:
        raise InputError("holdout must be in [0, 1)")
    rng = np.random.default_rng(seed)
    train_idx, test_idx = split_by_prompt(rows, holdout, seed)
    train_pairs = make_pairs(rows, train_idx, group_by, rng)
    test_pairs = make_pairs(rows, test_idx, group_by, rng)
    if not train_pairs:
        raise InputError(no_pairs_message(group_by))
    weights: Weights = {k: dict(v) for k, v in (init or {}).items()}
    types: dict[str, Any] = {}
    totals = {s: {"pairs": 0, "correct": 0.0, "uniform_correct": 0.0} for s in ("train", "heldout")}
    for rtype in sorted(set(train_pairs) | set(test_pairs)):
        members = [i for i, r in enumerate(rows) if r["response_type"] == rtype]
        names = sorted({n for i in members for n in row_features(rows[i])})
        X = np.zeros((len(rows), len(names)))
        for i in members:
            f = row_features(rows[i])
            X[i] = [f.get(n, 0.0) for n in names]
        d_train = pair_diffs(X, train_pairs.get(rtype, []))
        d_test = pair_diffs(X, test_pairs.get(rtype, []))
        stats: dict[str, Any] = {"features": len(names)}
        if len(d_train):
            w = hinge_fit(d_train, margin=margin, l2=l2, steps=steps, seed=seed)
            weights[rtype] = {n: round(float(x), 4) for n, x in zip(names, w)}
        else:
            init_w = weights.get(rtype, {})
            w = np.array([init_w.get(n, 0.0) for n in names])
            stats["kept_init"] = True
        ones = np.ones(len(names))
        for split, D in (("train", d_train), ("heldout", d_test)):
            acc, uni = pairwise_accuracy(D, w), pairwise_accuracy(D, ones)
            stats[split] = {"pairs": len(D), "accuracy": acc, "uniform_accuracy": uni}
            totals[split]["pairs"] += len(D)
            totals[split]["correct"] += (acc or 0.0) * len(D)
            totals[split]["uniform_correct"] += (uni or 0.0) * len(D)
        types[rtype] = stats

    def summary(t: dict[str, float]) -> dict[str, Any]:
        n = int(t["pairs"])
        return {"pairs": n, "accuracy": t["correct"] / n if n else None,
                "uniform_accuracy": t["uniform_correct"] / n if n else None}

    return {"weights": weights, "types": types, "train": summary(totals["train"]),
            "heldout": summary(totals["heldout"]),
            "settings": {"margin": margin, "l2": l2, "holdout": holdout, "seed": seed, "group_by": group_by,
                         "steps": steps, "rows": len(rows)}}
