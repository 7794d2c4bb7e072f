"""How far people agree (`cai.read.review_stats`, `cai.read.measures`): each measure against published worked
examples, and `review_stats` on a small set of decisions against numbers worked out by hand."""

from __future__ import annotations

import json
import sys
from typing import Any

import pandas as pd
import pytest

from cai.errors import InputError
from cai.read.measures import cohen_kappa, krippendorff_alpha, observed_agreement, share, wilson
from cai.read.review_stats import review_stats


@pytest.mark.parametrize(("k", "n", "low", "high"), [
    (81, 263, 0.2553, 0.3662), (15, 148, 0.0624, 0.1605), (0, 20, 0.0, 0.1611), (1, 29, 0.0061, 0.1718)])
def test_wilson_matches_newcombe(k: int, n: int, low: float, high: float) -> None:
    """Newcombe R.G. (1998), "Two-sided confidence intervals for the single proportion: comparison of seven
    methods", Statistics in Medicine 17:857-872, Table I, method 3 (Wilson score interval, no continuity
    correction), to the table's four decimals."""
    lo, hi = wilson(k, n)  # type: ignore[misc]
    assert (round(lo, 4), round(hi, 4)) == (low, high)


def test_wilson_edges() -> None:
    assert wilson(0, 0) is None
    assert share(0, 0) == {"k": 0, "n": 0, "share": None, "ci95": None}
    lo, hi = wilson(29, 29)  # type: ignore[misc]
    assert hi == 1.0 and round(lo, 4) == 0.8830  # symmetric to 0 of 29
    with pytest.raises(ValueError):
        wilson(3, 2)


def _expand(table: list[list[int]], labels: list[str]) -> tuple[list[str], list[str]]:
    """Two raters' label lists from a contingency table (rows: rater A's label, columns: rater B's)."""
    a, b = [], []
    for i, row in enumerate(table):
        for j, count in enumerate(row):
            a += [labels[i]] * count
            b += [labels[j]] * count
    return a, b


def test_cohen_kappa_fleiss_diagnoses() -> None:
    """Fleiss J.L., Levin B., Paik M.C. (2003), Statistical Methods for Rates and Proportions, 3rd ed., §18.1:
    two raters' diagnoses (psychotic, neurotic, organic) as proportions .75 .01 .04 / .05 .04 .01 / .00 .00 .10
    (here ×100): p_o = .89, p_e = .80·.80 + .10·.05 + .10·.15 = .66, kappa = .23/.34 = .68."""
    a, b = _expand([[75, 1, 4], [5, 4, 1], [0, 0, 10]], ["psychotic", "neurotic", "organic"])
    assert cohen_kappa(a, b) == pytest.approx(0.23 / 0.34)
    assert round(cohen_kappa(a, b), 2) == 0.68  # type: ignore[arg-type]


def test_cohen_kappa_two_by_two() -> None:
    """The yes/no example of Wikipedia's "Cohen's kappa" (50 applications; 20 both yes, 15 both no, 5 and 10
    split): p_o = .7, p_e = .5, kappa = .4. Perfect agreement is 1; a single shared label is undefined."""
    a, b = _expand([[20, 5], [10, 15]], ["yes", "no"])
    assert cohen_kappa(a, b) == pytest.approx(0.4)
    assert cohen_kappa(["x", "y"], ["x", "y"]) == 1.0
    assert cohen_kappa(["x", "x"], ["x", "x"]) is None
    assert cohen_kappa([], []) is None


def _units(rows: dict[str, str]) -> list[dict[str, str]]:
    """Krippendorff's reliability data (one line of values per observer, "." where missing) as unit dicts."""
    cols = {r: v.split() for r, v in rows.items()}
    width = len(next(iter(cols.values())))
    return [{r: v[j] for r, v in cols.items() if v[j] != "."} for j in range(width)]


def test_krippendorff_alpha_nominal_with_missing_values() -> None:
    """Krippendorff K. (2011), "Computing Krippendorff's Alpha-Reliability", section C (nominal data, any number
    of observers, missing data): 4 observers, 12 units, alpha = 0.743."""
    units = _units({"A": "1 2 3 3 2 1 4 1 2 . . .", "B": "1 2 3 3 2 2 4 1 2 5 . 3",
                    "C": ". 3 3 3 2 3 4 2 2 5 1 .", "D": "1 2 3 3 2 4 4 1 2 5 1 ."})
    assert round(krippendorff_alpha(units), 3) == 0.743  # type: ignore[arg-type]


def test_krippendorff_alpha_binary_two_observers() -> None:
    """The same paper, section A (binary data, two observers, no missing data): alpha = 0.095."""
    units = _units({"A": "0 1 0 0 0 0 0 0 1 0", "B": "1 1 1 0 0 1 0 0 0 0"})
    assert round(krippendorff_alpha(units), 3) == 0.095  # type: ignore[arg-type]
    assert observed_agreement(units) == pytest.approx(0.6)


def test_krippendorff_alpha_by_hand() -> None:
    """Three units (chosen, chosen), (chosen, rejected), (rejected, both_bad): n = 6 values (chosen 3, rejected 2,
    both_bad 1), 4 off-diagonal coincidences, alpha = 1 − (n − 1)·4 / (2·(3·2 + 3·1 + 2·1)) = 1 − 20/22."""
    units = [{"a": "chosen", "b": "chosen"}, {"a": "chosen", "b": "rejected"}, {"a": "rejected", "b": "both_bad"}]
    assert krippendorff_alpha(units) == pytest.approx(1 - 20 / 22)


def test_krippendorff_alpha_undefined_without_variation() -> None:
    assert krippendorff_alpha([{"a": "x", "b": "x"}, {"a": "x", "c": "x"}]) is None
    assert krippendorff_alpha([{"a": "x"}, {"b": "y"}]) is None  # no unit has two values
    assert observed_agreement([{"a": "x"}]) is None


def test_alpha_without_the_review_extra_is_one_line_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "krippendorff", None)  # `import krippendorff` fails as if not installed
    with pytest.raises(InputError) as e:
        krippendorff_alpha([{"a": "x", "b": "y"}])
    assert str(e.value) == ("agreement between more than two reviewers needs the 'review' extra: "
                            "pip install 'cai[review]' (krippendorff is not installed)")
    assert review_stats(DECISIONS, CRITIQUES, PAIRS) == _expected()  # two reviewers: kappa, no library


CRITIQUES = [
    {"id": "r1", "round": 1, "principle": "harm", "violates": True},
    {"id": "r2", "round": 1, "principle": "harm", "violates": False},
    {"id": "r3", "round": 1, "principle": "honesty", "violates": True},
    {"id": "r4", "round": 1, "principle": "honesty", "violates": None},
]


def _ai(pid: str, p_first: float, p_second: float) -> dict[str, Any]:
    """An AI-labeled pair row of `Run.pairs()` (only the fields the statistics read, and two more)."""
    label = {"p_chosen_first": p_first, "p_chosen_second": p_second, "rank_by": "judge", "margin": 0.3}
    return {"id": pid, "source": "ai_label", "label": label}


PAIRS = [
    {"id": "r1", "source": "revision", "label": None},
    {"id": "r2", "source": "revision", "label": None},
    _ai("r1:sample1>draft0", 0.9, 0.8), _ai("r2:sample0>sample1", 0.55, 0.65), _ai("r3:sample0>draft0", 0.4, 0.6),
]


def _d(item: str, rid: str, decision: str, reviewer: str, **kw: Any) -> dict[str, Any]:
    return {"id": rid, "item": item, "round": kw.get("round", 1 if item == "critique" else None),
            "pair": kw.get("pair"), "decision": decision, "reviewer": reviewer, "edit": None, "note": None,
            "time": kw.get("time", "2026-12-07T10:00:00"), "stale": kw.get("stale", False)}


DECISIONS = [
    _d("critique", "r1", "agree", "alice"), _d("critique", "r1", "disagree", "bob"),
    _d("critique", "r2", "disagree", "alice", time="2026-12-07T09:00:00"),  # superseded by her later agree
    _d("critique", "r2", "agree", "alice"), _d("critique", "r3", "disagree", "alice"),
    _d("critique", "r4", "agree", "alice"),  # the critic's verdict was not parsed
    _d("critique", "r9", "agree", "alice"),  # no such critique
    _d("critique", "r3", "agree", "bob", stale=True),
    _d("pair", "r1", "chosen", "alice"), _d("pair", "r1", "chosen", "bob"), _d("pair", "r2", "rejected", "alice"),
    _d("pair", "r3", "tie", "alice"),
    _d("pair", "r1", "chosen", "alice", pair="sample1>draft0"),
    _d("pair", "r1", "rejected", "bob", pair="sample1>draft0"),
    _d("pair", "r2", "rejected", "alice", pair="r2:sample0>sample1"),  # the full pair id works too
    _d("pair", "r2", "both_bad", "bob", pair="sample0>sample1"),
    _d("pair", "r3", "chosen", "alice", pair="sample0>draft0"),  # P = 0.5: the judge is undecided
    _d("pair", "r1", "chosen", "bob", pair="x>y"),  # no such pair
]


def _expected() -> dict[str, Any]:
    """The numbers worked out by hand from CRITIQUES, PAIRS and DECISIONS."""
    return {
        "decisions": {"total": 18, "used": 16, "stale": 1, "superseded": 1, "unmatched": 2},
        "critic": {
            # harm: r1 flagged (alice agrees, bob not), r2 not flagged (alice agrees); honesty: r3 (alice disagrees)
            "overall": {"violates": share(1, 3), "no_violation": share(1, 1)},
            "by_principle": {"harm": {"violates": share(1, 2), "no_violation": share(1, 1)},
                             "honesty": {"violates": share(0, 1), "no_violation": share(0, 0)}},
            "no_verdict": 1},
        "revision": {"preferred_revision": share(2, 4), "chosen": 2, "rejected": 1, "tie": 1, "both_bad": 0},
        "judge": {
            # r1 pair: P = .85 (confidence .35): alice agrees, bob not; r2 pair: P = .6 (confidence .1): alice not
            "agreement": share(1, 3),
            "by_confidence": [{"confidence": [0.0, 0.1], **share(0, 0)}, {"confidence": [0.1, 0.2], **share(0, 1)},
                              {"confidence": [0.2, 0.3], **share(0, 0)}, {"confidence": [0.3, 0.5], **share(1, 2)}],
            "tie": 0, "both_bad": 1, "undecided": 1},
        "reviewers": {
            # two reviewers: kappa, no alpha. One critique both decided, and disagreed on: p_o = p_e = 0, kappa 0
            "critique": {"items": 1, "reviewers": ["alice", "bob"], "observed": 0.0, "kappa": 0.0, "alpha": None},
            # three pairs: (chosen, chosen), (chosen, rejected), (rejected, both_bad): p_o = 1/3, p_e = 2/9 + 1/9
            "pair": {"items": 3, "reviewers": ["alice", "bob"], "observed": pytest.approx(1 / 3),
                     "kappa": pytest.approx(0.0, abs=1e-12), "alpha": None}},
    }


def test_review_stats_worked_by_hand() -> None:
    stats = review_stats(DECISIONS, CRITIQUES, PAIRS)
    assert stats == _expected()
    json.dumps(stats)  # JSON-ready for `--json`


def test_review_stats_takes_dataframes_with_missing_values() -> None:
    """`Run.reviews()`, `Run.critiques()` and `Run.pairs()` frames: None becomes NaN in numeric columns."""
    frames = [pd.DataFrame(x) for x in (DECISIONS, CRITIQUES, PAIRS)]
    assert frames[0]["round"].isna().any()
    assert review_stats(*frames) == _expected()


def test_review_stats_three_reviewers_alpha_only_and_empty() -> None:
    decisions = [_d("critique", rid, dec, who) for rid, dec, who in [
        ("r1", "agree", "a"), ("r1", "agree", "b"), ("r1", "disagree", "c"), ("r2", "agree", "a"),
        ("r2", "agree", "c"), ("r3", "disagree", "b"), ("r3", "disagree", "c")]]
    rev = review_stats(decisions, CRITIQUES, [])["reviewers"]["critique"]
    units = [{"a": "agree", "b": "agree", "c": "disagree"}, {"a": "agree", "c": "agree"},
             {"b": "disagree", "c": "disagree"}]
    assert rev["kappa"] is None and rev["reviewers"] == ["a", "b", "c"] and rev["items"] == 3
    assert rev["alpha"] == pytest.approx(krippendorff_alpha(units))
    # by hand: n = 7 values (agree 4, disagree 3); unit 1 gives o(agree, disagree) = o(disagree, agree) = 2/2;
    # alpha = 1 − (7 − 1)·2 / (2·4·3) = 0.5
    assert rev["alpha"] == pytest.approx(0.5)
    empty = review_stats([], [], [])
    assert empty["decisions"] == {"total": 0, "used": 0, "stale": 0, "superseded": 0, "unmatched": 0}
    assert empty["judge"]["agreement"]["share"] is None
    assert empty["reviewers"]["pair"] == {"items": 0, "reviewers": [], "observed": None, "kappa": None,
                                          "alpha": None}


def test_confidence_bins_edges() -> None:
    """|P − 0.5| = 0.1 falls in [0.1, 0.2) (not [0, 0.1) by rounding); 0.5 in the closed last bin."""
    pairs = [{"id": "r1:a>b", "source": "ai_label", "label": {"p_chosen_first": 0.6, "p_chosen_second": 0.6}},
             {"id": "r2:a>b", "source": "ai_label", "label": {"p_chosen_first": 1.0, "p_chosen_second": None}}]
    decisions = [_d("pair", "r1", "chosen", "a", pair="a>b"), _d("pair", "r2", "chosen", "a", pair="a>b")]
    bins = review_stats(decisions, [], pairs)["judge"]["by_confidence"]
    assert [b["n"] for b in bins] == [0, 1, 0, 1]


def test_unknown_decision_is_refused() -> None:
    with pytest.raises(ValueError, match="not 'flip'"):
        review_stats([_d("pair", "r1", "flip", "a")], [], [])
