"""Rank K candidates from a judge's soft pairwise labels and turn the ranking into preference pairs.

A comparison `(i, j, p)` is the judge's P(candidate i ≻ candidate j), p in [0, 1] (0.5 = undecided); it
counts p wins for i over j and 1 − p for j over i. `rank` fits a Bradley–Terry model (K > 2) or uses the
averaged labels directly (K = 2); `oriented` turns a ranking into winner-first pairs with their margins
P − 0.5 (the exports keep those above a threshold: `cai.read.rows.kept_pairs`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from cai.core.choice import leaning

Comparison = tuple[int, int, float]


def _soft_wins(k: int, comparisons: Sequence[Comparison]) -> np.ndarray:
    """k×k matrix: [i, j] = soft wins of i over j summed over the comparisons (validated)."""
    wins = np.zeros((k, k))
    for i, j, p in comparisons:
        if not (0 <= i < k and 0 <= j < k) or i == j:
            raise ValueError(f"comparison ({i}, {j}): indices must be distinct and in [0, {k})")
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"comparison ({i}, {j}, {p}): p must be in [0, 1]")
        wins[i, j] += p
        wins[j, i] += 1.0 - p
    return wins


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return np.exp(-np.logaddexp(0.0, -x))


def bradley_terry(k: int, comparisons: Sequence[Comparison], *, prior: float = 0.5, iters: int = 1000,
                  tol: float = 1e-9) -> np.ndarray:
    """Log-strengths s (length k, mean 0) of P(i ≻ j) = sigmoid(s_i − s_j), fit by Hunter's (2004) MM.

    Prior: on top of the soft counts, every ordered pair (i, j), i ≠ j, gets `prior` virtual wins of i
    over j, so each pair has `prior` virtual wins each way: a symmetric Beta(prior+1, prior+1)-like pull
    of every P(i ≻ j) towards 0.5 (the MAP fit), weighing as much as 2·prior real comparisons of the pair.
    It keeps scores finite when a candidate wins (or loses) everything, and with no comparisons all scores
    are 0. `prior` must be > 0. Stops when no log-strength moves more than `tol` in one step, or after
    `iters` steps; deterministic.
    """
    if prior <= 0:
        raise ValueError(f"prior must be > 0, got {prior}")
    wins = _soft_wins(k, comparisons)
    if k < 2:
        return np.zeros(k)
    wins += prior * (1.0 - np.eye(k))
    games = wins + wins.T  # n_ij, zero on the diagonal
    total_wins = wins.sum(axis=1)
    s = np.zeros(k)
    for _ in range(iters):
        gamma = np.exp(s)
        denom = (games / (gamma[:, None] + gamma[None, :])).sum(axis=1)
        new = np.log(total_wins / denom)
        new -= new.mean()
        done = np.max(np.abs(new - s)) < tol
        s = new
        if done:
            break
    return s


def win_rates(k: int, comparisons: Sequence[Comparison]) -> np.ndarray:
    """Mean soft win rate of each candidate over the comparisons it is in (0.5 when it is in none)."""
    wins = _soft_wins(k, comparisons)
    games = (wins + wins.T).sum(axis=1)
    return np.where(games > 0, wins.sum(axis=1) / np.maximum(games, 1e-300), 0.5)


@dataclass
class Ranking:
    """Scores of the candidates (higher = better), the method that made them, and P(i ≻ j) via `prob`."""

    scores: list[float]
    method: str
    probs: np.ndarray = field(repr=False, compare=False)  # k×k, [i, j] = P(i ≻ j)

    def prob(self, i: int, j: int) -> float:
        """The model's P(candidate i ≻ candidate j) (0.5 for i == j)."""
        return float(self.probs[i, j])

    @classmethod
    def logistic(cls, scores: Sequence[float], method: str) -> Ranking:
        """A ranking by scores on a log-odds scale: P(i ≻ j) = sigmoid(s_i − s_j)."""
        s = np.asarray(scores, dtype=float)
        return cls([float(x) for x in s], method, _sigmoid(s[:, None] - s[None, :]))


def rank(k: int, comparisons: Sequence[Comparison],
         method: Literal["auto", "bt", "win_rate"] = "auto") -> Ranking:
    """Rank k candidates from soft pairwise labels.

    "bt": scores = `bradley_terry` log-strengths, P(i ≻ j) = sigmoid(s_i − s_j). "win_rate": scores =
    `win_rates`, P(i ≻ j) = the mean soft label of i over j across the comparisons of that pair, in both
    orders (0.5 for a pair never compared). "auto" picks "win_rate" for k == 2 (the averaged label of the
    one pair is the answer; a BT fit would only shrink it towards 0.5 through its prior) and "bt" otherwise.
    """
    if method == "auto":
        method = "win_rate" if k == 2 else "bt"
    if method == "bt":
        return Ranking.logistic(bradley_terry(k, comparisons), "bt")
    if method == "win_rate":
        wins = _soft_wins(k, comparisons)
        games = wins + wins.T
        probs = np.where(games > 0, wins / np.maximum(games, 1e-300), 0.5)
        return Ranking([float(x) for x in win_rates(k, comparisons)], "win_rate", probs)
    raise ValueError(f"unknown ranking method {method!r} (auto, bt, win_rate)")


def oriented(ranking: Ranking, by: str) -> dict[str, Any]:
    """The ranking as a label step stores it: its method, scores, and every unordered pair {i, j} once,
    winner-first with its margin P(winner ≻ loser) − 0.5 (a tie, within `UNDECIDED_WITHIN` of 0.5: margin 0,
    the lower index first), ordered by decreasing margin, then by (chosen, rejected). `cai.read.rows.kept_pairs`
    keeps those above `--min-margin`."""
    k, pairs = len(ranking.scores), []
    for i in range(k):
        for j in range(i + 1, k):
            p = ranking.prob(i, j)
            w, l_ = (i, j) if leaning(p) >= 0 else (j, i)
            pairs.append({"chosen": w, "rejected": l_, "margin": round(abs(p - 0.5), 12) if leaning(p) else 0.0,
                          "score_chosen": ranking.scores[w], "score_rejected": ranking.scores[l_]})
    pairs.sort(key=lambda x: (-x["margin"], x["chosen"], x["rejected"]))
    return {"by": by, "method": ranking.method, "scores": ranking.scores, "pairs": pairs}


def standardize(xs: Sequence[float]) -> list[float]:
    """z-scores (population standard deviation) of `xs`; all equal (or empty) → zeros, for adding scores
    from different scales (e.g. a judge ranking and rule-based rewards)."""
    a = np.asarray(xs, dtype=float)
    if a.size == 0 or np.all(a == a[0]):
        return [0.0] * a.size
    return [float(z) for z in (a - a.mean()) / a.std()]
