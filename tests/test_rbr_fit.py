"""Weight fitting: recovers known weights on synthetic data and beats uniform weights on held-out pairs."""

import numpy as np
import pytest

from cai.errors import InputError
from cai.rbr.fit import fit, make_pairs, split_by_prompt

TRUE_W = {"good": 2.0, "helpful": 1.0, "bad": -2.0, "rude": -1.0, "noise": 0.0}


def synthetic(n_prompts=80, per_prompt=4, seed=1):
    """Responses whose class comes from a hidden linear score (tertiles per data set)."""
    rng = np.random.default_rng(seed)
    names = list(TRUE_W)
    w = np.array([TRUE_W[n] for n in names])
    rows = []
    for p in range(n_prompts):
        for _ in range(per_prompt):
            x = rng.random(len(names))
            rows.append({"prompt": [{"role": "user", "content": f"prompt {p}"}], "response_type": "T",
                         "propositions": {n: {"p_yes": float(v), "method": "logprobs"}
                                          for n, v in zip(names[:4], x[:4])},
                         "checks": {"noise": float(x[4])}, "_score": float(x @ w)})
    cuts = np.quantile([r["_score"] for r in rows], [1 / 3, 2 / 3])
    for r in rows:
        r["class"] = "unacceptable" if r["_score"] < cuts[0] else (
            "minimum_acceptable" if r["_score"] < cuts[1] else "ideal")
    return rows


def test_split_keeps_prompts_together():
    rows = synthetic(20, 3)
    train, test = split_by_prompt(rows, 0.25, seed=0)
    assert len(test) == 15 and len(train) == 45
    key = lambda i: rows[i]["prompt"][0]["content"]  # noqa: E731
    assert not {key(i) for i in train} & {key(i) for i in test}
    assert split_by_prompt(rows, 0.25, seed=0) == (train, test)


def test_recovers_known_weights_and_beats_uniform():
    rows = synthetic()
    result = fit(rows, holdout=0.25, seed=0)
    w = result["weights"]["T"]
    for name, true in TRUE_W.items():
        if true:
            assert np.sign(w[name]) == np.sign(true), (name, w)
    assert abs(w["noise"]) < 0.5 * min(abs(v) for v in TRUE_W.values() if v)
    assert w["good"] > w["helpful"] > 0 > w["rude"] > w["bad"]
    vec = np.array([w[n] for n in TRUE_W])
    true = np.array(list(TRUE_W.values()))
    assert vec @ true / (np.linalg.norm(vec) * np.linalg.norm(true)) > 0.95
    ho = result["heldout"]
    assert ho["pairs"] > 50
    assert ho["accuracy"] > 0.9 and ho["accuracy"] > ho["uniform_accuracy"] + 0.2
    assert result["train"]["accuracy"] > 0.9
    assert fit(rows, holdout=0.25, seed=0)["weights"] == result["weights"]  # seeded


def test_gold_class_takes_precedence_and_group_by_type():
    rows = synthetic(30, 1)
    for r in rows:
        r["gold_class"], r["class"] = r["class"], "ideal"
    with pytest.raises(InputError, match="no training pairs"):
        fit(rows, group_by="prompt")  # one response per prompt: nothing to pair
    result = fit(rows, group_by="type", holdout=0.3)
    assert result["train"]["pairs"] > 0 and result["train"]["accuracy"] > 0.8
    pairs = make_pairs(rows, list(range(len(rows))), "type", np.random.default_rng(0))
    assert all(rows[a]["gold_class"] != rows[b]["gold_class"] for a, b in pairs["T"])


def test_types_without_pairs_keep_init_weights():
    rows = synthetic(20, 3)
    result = fit(rows, holdout=0.2, init={"Other": {"good": 1.0}})
    assert result["weights"]["Other"] == {"good": 1.0} and "T" in result["weights"]
