"""cai.labels.rank: Bradley–Terry from soft labels, win rates; preference pairs and near-ties as a label step
stores them (`oriented`) and the exports cut them (`cai.read.rows.kept_pairs`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from cai.labels.rank import Ranking, bradley_terry, oriented, rank, standardize, win_rates
from cai.read.rows import kept_pairs

TRUE_S = np.array([2.0, 1.0, 0.0, -1.0, -2.0])


@dataclass(frozen=True)
class Pair:
    chosen: int
    rejected: int
    margin: float
    score_chosen: float
    score_rejected: float


def preference_pairs(r: Ranking, min_margin: float = 0.0) -> tuple[list[Pair], int]:
    """The pairs the exports keep of ranking `r` (stored by `oriented`, cut by `kept_pairs`), and the near-ties."""
    kept, near = kept_pairs(oriented(r, "judge")["pairs"], min_margin)
    return [Pair(**p) for p in kept], near


def sigmoid(x: float) -> float:
    return float(1.0 / (1.0 + np.exp(-x)))


def all_ordered(s: np.ndarray) -> list[tuple[int, int, float]]:
    """Every ordered pair once, labelled with the true probability."""
    return [(i, j, sigmoid(s[i] - s[j])) for i in range(len(s)) for j in range(len(s)) if i != j]


def test_noiseless_soft_labels_recover_order_and_strengths() -> None:
    comps = all_ordered(TRUE_S)
    s = bradley_terry(5, comps)
    assert list(np.argsort(-s)) == [0, 1, 2, 3, 4]
    assert abs(s.mean()) < 1e-9
    assert np.allclose(s, -s[::-1], atol=1e-6)  # symmetric strengths stay symmetric
    # the prior only shrinks towards 0; a tiny prior gives back the true strengths
    assert np.all(np.abs(s) <= np.abs(TRUE_S) + 1e-6)
    assert np.allclose(bradley_terry(5, comps, prior=1e-6), TRUE_S, atol=1e-4)


def test_fit_is_stationary_point_of_penalised_likelihood() -> None:
    rng = np.random.default_rng(3)
    comps = [(int(i), int(j), float(rng.uniform())) for i, j in rng.integers(0, 4, size=(40, 2)) if i != j]
    prior = 0.5
    s = bradley_terry(4, comps, prior=prior, tol=1e-13, iters=10000)
    wins = np.full((4, 4), prior) - prior * np.eye(4)
    for i, j, p in comps:
        wins[i, j] += p
        wins[j, i] += 1 - p
    expected = (wins + wins.T) / (1 + np.exp(-(s[:, None] - s[None, :])))
    np.fill_diagonal(expected, 0.0)
    assert np.allclose(wins.sum(axis=1), expected.sum(axis=1), atol=1e-8)


def test_noisy_binary_outcomes_give_close_scores() -> None:
    rng = np.random.default_rng(20240601)
    comps = []
    for _ in range(3000):
        i, j = rng.choice(5, size=2, replace=False)
        comps.append((int(i), int(j), float(rng.uniform() < sigmoid(TRUE_S[i] - TRUE_S[j]))))
    s = bradley_terry(5, comps)
    assert np.corrcoef(s, TRUE_S)[0, 1] > 0.95
    assert list(np.argsort(-s)) == [0, 1, 2, 3, 4]
    assert np.max(np.abs(s - TRUE_S)) < 0.3


def test_order_of_comparison_does_not_matter() -> None:
    a = bradley_terry(3, [(0, 1, 0.9), (1, 2, 0.6), (2, 0, 0.3)])
    b = bradley_terry(3, [(1, 0, 0.1), (2, 1, 0.4), (0, 2, 0.7)])
    assert np.allclose(a, b)


def test_unbeaten_candidate_gets_finite_highest_score() -> None:
    comps = [(2, j, 1.0) for j in (0, 1, 3)] + [(j, 2, 0.0) for j in (0, 1, 3)] + [(0, 1, 0.5)]
    s = bradley_terry(4, comps)
    assert np.all(np.isfinite(s))
    assert int(np.argmax(s)) == 2 and all(s[2] > s[j] for j in (0, 1, 3))
    r = rank(4, comps)
    assert r.method == "bt" and 0.5 < r.prob(2, 0) < 1.0


def test_no_comparisons_all_tie() -> None:
    assert np.array_equal(bradley_terry(4, []), np.zeros(4))
    assert np.array_equal(win_rates(4, []), np.full(4, 0.5))
    r = rank(4, [])
    assert r.scores == [0.0] * 4 and r.prob(1, 3) == 0.5
    assert preference_pairs(r) == ([], 6)
    assert bradley_terry(1, []).tolist() == [0.0] and bradley_terry(0, []).size == 0


def test_win_rates() -> None:
    wr = win_rates(3, [(0, 1, 1.0), (1, 0, 0.25), (0, 2, 0.5)])
    assert wr.tolist() == pytest.approx([(1.0 + 0.75 + 0.5) / 3, (0.0 + 0.25) / 2, 0.5])
    assert win_rates(3, [(0, 1, 0.7)]).tolist() == pytest.approx([0.7, 0.3, 0.5])


def test_two_candidates_auto_uses_averaged_label() -> None:
    comps = [(0, 1, 0.8), (1, 0, 0.4)]  # both orders: P(0 ≻ 1) = (0.8 + 0.6) / 2
    r = rank(2, comps)
    assert r.method == "win_rate"
    assert r.prob(0, 1) == pytest.approx(0.7) and r.prob(1, 0) == pytest.approx(0.3)
    assert r.scores == pytest.approx([0.7, 0.3])
    assert rank(2, comps, method="bt").method == "bt"
    assert rank(2, comps, method="bt").prob(0, 1) < 0.7  # the prior shrinks it; hence win_rate for K = 2
    assert rank(3, comps).method == "bt"


def test_win_rate_prob_for_uncompared_pair_is_half() -> None:
    r = rank(3, [(0, 1, 0.9)], method="win_rate")
    assert r.prob(0, 1) == pytest.approx(0.9) and r.prob(0, 2) == 0.5 and r.prob(2, 1) == 0.5


def test_bt_prob_is_sigmoid_of_score_difference() -> None:
    r = rank(5, all_ordered(TRUE_S))
    assert r.prob(1, 3) == pytest.approx(sigmoid(r.scores[1] - r.scores[3]))
    assert r.prob(3, 1) == pytest.approx(1 - r.prob(1, 3))


def test_near_tie_at_exact_threshold() -> None:
    r = rank(2, [(0, 1, 0.75)])  # margin exactly 0.25
    assert preference_pairs(r, min_margin=0.25) == ([], 1)
    pairs, ties = preference_pairs(r, min_margin=0.2)
    assert ties == 0 and pairs == [Pair(0, 1, 0.25, 0.75, 0.25)]
    # an exact tie is never a pair, even at min_margin 0
    assert preference_pairs(rank(2, [(0, 1, 0.5)]), 0.0) == ([], 1)
    # the loser-first label still gives the winner as chosen
    assert preference_pairs(rank(2, [(1, 0, 0.1)]))[0] == [Pair(0, 1, pytest.approx(0.4), 0.9, 0.1)]


def test_pairs_order_and_fields() -> None:
    # labels that are exact binary fractions, so margins compare exactly with the threshold
    comps = [(0, 1, 0.75), (0, 2, 0.875), (1, 2, 0.125), (0, 3, 0.625), (1, 3, 0.875), (2, 3, 0.75)]
    r = rank(4, comps, method="win_rate")
    pairs, ties = preference_pairs(r, min_margin=0.125)
    assert ties == 1  # {0, 3}: margin 0.125, not above the threshold
    got = [(p.chosen, p.rejected, p.margin) for p in pairs]
    assert got == [(0, 2, 0.375), (1, 3, 0.375), (2, 1, 0.375), (0, 1, 0.25), (2, 3, 0.25)]
    for p in pairs:
        assert (p.score_chosen, p.score_rejected) == (r.scores[p.chosen], r.scores[p.rejected])
        assert 0 < p.margin <= 0.5 and p.margin == pytest.approx(r.prob(p.chosen, p.rejected) - 0.5)
    assert len(preference_pairs(r)[0]) == 6


def test_bt_pairs_follow_strengths() -> None:
    r = rank(5, all_ordered(TRUE_S))
    pairs, ties = preference_pairs(r)
    assert ties == 0 and len(pairs) == 10
    assert all(p.chosen < p.rejected for p in pairs)  # candidate 0 is strongest
    assert (pairs[0].chosen, pairs[0].rejected) == (0, 4)
    assert [p.margin for p in pairs] == sorted((p.margin for p in pairs), reverse=True)
    strong_only, ties = preference_pairs(r, min_margin=pairs[5].margin)
    assert len(strong_only) + ties == 10 and all(p.margin > pairs[5].margin for p in strong_only)


def test_invalid_inputs() -> None:
    with pytest.raises(ValueError):
        bradley_terry(3, [(0, 0, 0.5)])
    with pytest.raises(ValueError):
        bradley_terry(3, [(0, 3, 0.5)])
    with pytest.raises(ValueError):
        win_rates(3, [(0, 1, 1.5)])
    with pytest.raises(ValueError):
        bradley_terry(3, [], prior=0.0)
    with pytest.raises(ValueError):
        rank(3, [], method="elo")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        preference_pairs(rank(2, []), min_margin=-0.1)


def test_standardize() -> None:
    z = standardize([1.0, 2.0, 3.0])
    assert z == pytest.approx([-1.224744871, 0.0, 1.224744871])
    assert np.mean(z) == pytest.approx(0.0) and np.std(z) == pytest.approx(1.0)
    assert standardize([0.1, 0.1, 0.1]) == [0.0, 0.0, 0.0]
    assert standardize([]) == []
    # a judge ranking and rule-based rewards on one scale
    combined = np.add(standardize([0.9, -0.2, 0.1]), standardize([10.0, 30.0, 20.0]))
    assert combined.sum() == pytest.approx(0.0)
