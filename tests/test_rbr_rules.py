"""RBR constitution sections, rule combination, class assignment, checks, weights and metrics."""

import json

import numpy as np
import pytest
from pydantic import ValidationError

from cai.constitution import CLASS_RANK, RBR_CLASSES, ResponseType, load
from cai.errors import InputError
from cai.limits import WEIGHTS_BYTES
from cai.rbr.evaluate import auc, binary_metrics, evaluate
from cai.rbr.fit import make_pairs
from cai.rbr.metrics import refusal_rates
from cai.rbr.reward import load_weights, reward
from cai.rbr.rules import classify, failed_items, truth
from cai.rbr.score import assemble, feedback_text
from cai.scoring.checks import CHECKS, check, run_checks
from helpers import shared_file

GOLD = "rbr_gold_dev.jsonl"  # of the shared development data (helpers.shared_file)
U = [{"role": "user", "content": "hi"}]


def const():
    return load("rbr-safety")


def test_rbr_safety_loads():
    c = const()
    assert len(c.principles) >= 6
    assert set(c.response_types) == {"Comply", "Hard Refuse", "Safe Refuse 1", "Safe Refuse 2"}
    ids = [p.id for p in c.propositions]
    assert ids and len(set(ids)) == len(ids)
    # every proposition a rule names is one of the constitution's
    assert {pid for rt in c.response_types.values() for r in rt.rules for pid in r.when} <= set(ids)
    assert {"mentions_ai_language_model", "apology_count", "refusal_phrasing", "verbosity",
            "asks_clarifying_question", "exclamation_density", "hedging_density"} <= {x.name for x in c.checks}


def test_rbr_safety_propositions_are_the_gold_set_labels():
    gold = shared_file(GOLD)
    ids = {p.id for p in const().propositions}
    for line in gold.read_text().splitlines():
        if line.strip():
            assert set(json.loads(line)["propositions"]) == ids


def test_rules_accept_exactly_the_ranked_classes():
    """A rule's class and a type's default may be any ranked class and nothing else (`CLASS_RANK` can order
    every class a rule assigns)."""
    assert set(CLASS_RANK) == set(RBR_CLASSES)
    for cls in RBR_CLASSES:
        rt = ResponseType.model_validate({"default": cls, "rules": [{"when": {"refusal": True}, "class": cls}]})
        assert classify(rt, {"refusal": True}) == cls == classify(rt, {"refusal": False})
    for bad in ("great", "Ideal", "acceptable"):
        with pytest.raises(ValidationError):
            ResponseType.model_validate({"rules": [{"when": {"refusal": True}, "class": bad}]})
        with pytest.raises(ValidationError):
            ResponseType.model_validate({"default": bad})


def test_class_rank_puts_the_better_class_first_in_fit_pairs():
    """Reward fitting ranks responses of one prompt by class, best first: ideal > minimum_acceptable >
    unacceptable; a row without a known class is left out."""
    classes = ["unacceptable", "ideal", "not_a_class", "minimum_acceptable"]
    rows = [{"prompt": U, "response_type": "Comply", "class": c} for c in classes]
    pairs = make_pairs(rows, list(range(len(rows))), "prompt", np.random.default_rng(0))
    assert sorted(pairs["Comply"]) == [(1, 0), (1, 3), (3, 0)]
    # a gold class, when present, decides instead of the graded one
    rows[0]["gold_class"] = "ideal"
    pairs = make_pairs(rows, list(range(len(rows))), "prompt", np.random.default_rng(0))
    assert sorted(pairs["Comply"]) == [(0, 3), (1, 3)]


def test_first_matching_rule_wins_and_default_applies():
    rt = ResponseType.model_validate({"default": "minimum_acceptable", "rules": [
        {"when": {"refusal": True, "judgemental": False}, "class": "ideal"},
        {"when": {"refusal": True}, "class": "unacceptable"},
        {"when": {"refusal": True, "judgemental": True}, "class": "ideal"},  # never reached
    ]})
    assert classify(rt, {"refusal": True, "judgemental": False}) == "ideal"
    assert classify(rt, {"refusal": True, "judgemental": True}) == "unacceptable"
    assert classify(rt, {"refusal": False, "judgemental": True}) == "minimum_acceptable"
    assert classify(rt, {}) == "minimum_acceptable"  # a missing proposition never matches
    assert truth({"a": 0.5, "b": 0.49}) == {"a": True, "b": False}


def test_rbr_safety_classes_on_hand_made_values():
    c = const()
    base = {p.id: False for p in c.propositions}
    hard = c.response_types["Hard Refuse"]
    assert classify(hard, {**base, "inability_to_comply": True, "apology": True}) == "ideal"
    assert classify(hard, {**base, "inability_to_comply": True, "judgement": True}) == "minimum_acceptable"
    assert classify(hard, {**base, "inability_to_comply": True, "disallowed_content": True}) == "unacceptable"
    comply = c.response_types["Comply"]
    assert classify(comply, {**base, "fully_complies": True}) == "ideal"
    assert classify(comply, {**base, "fully_complies": True, "apology": True}) == "minimum_acceptable"
    assert classify(comply, {**base, "inability_to_comply": True}) == "unacceptable"


def test_failed_items_and_feedback():
    c = const()
    p = {pid.id: 0.1 for pid in c.propositions}
    p.update(inability_to_comply=0.9, apology=0.8, judgement=0.7)
    checks = {"verbosity": 0.9, "exclamation_density": 0.0}
    items = failed_items(c, "Hard Refuse", p, checks)
    assert any(i.startswith("judgement (want no") for i in items)
    assert any(i.startswith("verbosity 0.90 is above") for i in items)
    assert not any(i.startswith("apology") for i in items)
    score = assemble(c, load_weights(None, c), "Hard Refuse",
                     {k: {"p_yes": v, "method": "logprobs"} for k, v in p.items()}, checks)
    assert score["class"] == "minimum_acceptable" and score["failed"] == items
    text = feedback_text(score)
    assert "Hard Refuse" in text and "judgement" in text and "verbosity" in text
    assert feedback_text({**score, "failed": []}) == ""
    json.dumps(score)


def test_constitution_rbr_errors_name_file_and_line(tmp_path):
    head = "name: x\nprinciples:\n  - {id: a, critique: c, revision: r}\n"
    p = tmp_path / "bad.yaml"
    p.write_text(head + "propositions:\n  - {id: refusal, question: q}\nresponse_types:\n  T:\n    rules:\n"
                 "      - {when: {refusal: true}, class: ideal}\n      - {when: {nope: true}, class: ideal}\n")
    with pytest.raises(InputError) as e:
        load(str(p))
    assert str(e.value).startswith(f"{p}:10:") and "unknown proposition 'nope'" in str(e.value)
    p.write_text(head + "response_types:\n  T:\n    rules:\n      - {when: {a: true}, class: great}\n")
    with pytest.raises(InputError) as e:
        load(str(p))
    assert e.value.line == 7 and "class" in str(e.value)
    p.write_text(head + "checks:\n  - {name: no_such_check}\n")
    with pytest.raises(InputError) as e:
        load(str(p))
    assert e.value.line == 5 and "unknown check 'no_such_check'" in str(e.value)
    p.write_text(head + "propositions:\n  - {id: a, question: q}\n  - {id: a, question: r}\n")
    with pytest.raises(InputError, match="duplicate proposition id 'a'") as e:
        load(str(p))
    assert e.value.line == 6


CASES = {
    "mentions_ai_language_model": (["As an AI language model, I have no opinions.", "I'm just an AI, but here goes."],
                                   ["Paris is the capital of France.", "AI research began in the 1950s."]),
    "apology_count": (["I'm sorry, so sorry. My apologies.", "I apologize for the confusion."],
                      ["Here is the answer.", "No problem at all."]),
    "refusal_phrasing": (["I'm sorry, but I can't help with that.", "I can’t assist with making weapons.",
                          "I must decline this request."],
                         ["Sure, here is a recipe for bread.", "I cannot stress enough how good this is."]),
    "asks_clarifying_question": (["Which version are you using?", "Happy to help. Do you mean the 2020 model?"],
                                 ["Here is the answer.", "Why is the sky blue? Because of scattering."]),
    "exclamation_density": (["Great! Amazing! Wow!"], ["Fine. Okay. Sure."]),
    "hedging_density": (["It might perhaps work, maybe.", "I think it probably is."],
                        ["The boiling point of water is 100 C at sea level."]),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_each_check_on_positive_and_negative_examples(name):
    pos, neg = CASES[name]
    scores_pos = CHECKS[name]([U] * len(pos), pos)
    scores_neg = CHECKS[name]([U] * len(neg), neg)
    assert all(0.0 <= s <= 1.0 for s in scores_pos + scores_neg)
    assert min(scores_pos) > 0.3, scores_pos
    assert max(scores_neg) < 0.3, scores_neg


def test_verbosity_uses_the_length_budget_and_refusal_position():
    text = " ".join(["word"] * 50)
    assert CHECKS["verbosity"]([U], [text], length_budget=100) == [0.5]
    assert CHECKS["verbosity"]([U], [text], length_budget=10) == [1.0]
    late = "Here is a long answer. " * 20 + "I can't help with the rest."
    assert CHECKS["refusal_phrasing"]([U], [late]) == [0.4]
    assert CHECKS["apology_count"]([U], ["sorry " * 10]) == [1.0]


def test_check_registry_decorator():
    @check("shouty_test_check")
    def shouty(prompts, completions, **_):
        return [1.0 if c.isupper() else 0.0 for c in completions]

    try:
        assert run_checks(["shouty_test_check"], [U, U], ["HEY", "hey"]) == [{"shouty_test_check": 1.0},
                                                                             {"shouty_test_check": 0.0}]
        with pytest.raises(KeyError):
            run_checks(["missing"], [U], ["x"])
    finally:
        CHECKS.pop("shouty_test_check")


def test_weights_and_reward(tmp_path):
    c = const()
    w = load_weights(None, c)
    assert set(w) == set(c.response_types)
    p = {"fully_complies": 1.0, "judgement": 0.5}
    assert reward(w, "Comply", p, {"refusal_phrasing": 1.0}) == pytest.approx(
        w["Comply"]["fully_complies"] + 0.5 * w["Comply"]["judgement"] + w["Comply"]["refusal_phrasing"])
    assert reward(w, "Unknown", p, {}) == 0.0
    bad = tmp_path / "w.json"
    bad.write_text('{\n  "Comply": {\n    "fully_complies": 1,\n    "not_a_feature": 2\n  }\n}\n')
    with pytest.raises(InputError) as e:
        load_weights(bad, c)
    assert e.value.line == 4 and "not_a_feature" in str(e.value)
    bad.write_text('{"Comply": {"fully_complies": "high"}}')
    with pytest.raises(InputError, match="finite number"):
        load_weights(bad)
    bad.write_text("{not json")
    with pytest.raises(InputError, match="invalid JSON"):
        load_weights(bad)


def test_weights_files_beyond_the_limits_name_the_line(tmp_path):
    p = tmp_path / "w.json"
    p.write_text('{\n  "Comply": {"fully_complies": ' + "[" * 20_000 + "]" * 20_000 + "}}")
    with pytest.raises(InputError) as e:
        load_weights(p)
    assert str(e.value) == f"{p}:2: nested more than 100 levels deep"
    p.write_text('{\n  "Comply": {\n    "fully_complies": ' + "1" * 4_301 + "\n  }\n}")
    with pytest.raises(InputError) as e:
        load_weights(p)
    assert str(e.value) == f"{p}:3: an integer of 4301 digits (at most 4300)"
    with p.open("wb") as fh:
        fh.truncate(WEIGHTS_BYTES + 1)  # sparse: nothing written to disk
    with pytest.raises(InputError) as e:
        load_weights(p)
    assert str(e.value) == f"{p}: {WEIGHTS_BYTES + 1:,} bytes, over the 1 MiB limit for a weights file"


def test_auc_and_binary_metrics():
    y = np.array([0, 0, 1, 1])
    assert auc(y, np.array([0.1, 0.4, 0.35, 0.8])) == pytest.approx(0.75)
    assert auc(y, np.array([0.5, 0.5, 0.5, 0.5])) == pytest.approx(0.5)
    assert auc(np.array([1, 1]), np.array([0.2, 0.3])) is None
    m = binary_metrics(np.array([1, 0, 1, 0]), np.array([0.9, 0.8, 0.2, 0.1]))
    assert (m["accuracy"], m["precision"], m["recall"], m["f1"]) == (0.5, 0.5, 0.5, 0.5)
    none = binary_metrics(np.array([0, 0]), np.array([0.1, 0.2]))
    assert none["precision"] is None and none["recall"] is None and none["auc"] is None
    rows = [{"labels": {"a": True}, "propositions": {"a": {"p_yes": 0.9, "method": "logprobs"}},
             "class": "ideal", "gold_class": "ideal"},
            {"labels": {"a": False}, "propositions": {"a": {"p_yes": 0.7, "method": "votes"}},
             "class": "ideal", "gold_class": "unacceptable"}]
    out = evaluate(rows)
    assert out["propositions"]["a"]["auc"] == 1.0 and out["overall"]["accuracy"] == 0.5
    assert out["overall"]["class_agreement"] == 0.5 and out["overall"]["methods"] == {"logprobs": 1, "votes": 1}


def test_refusal_rates():
    r = refusal_rates(["refuse", "refuse", "comply", "comply", "comply"], [True, False, False, True, False])
    assert r == {"not_unsafe": 0.5, "not_overrefuse": 2 / 3, "should_refuse": 2, "should_comply": 3}
    assert refusal_rates([], [])["not_unsafe"] is None
