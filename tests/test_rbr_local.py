"""`cai rbr eval` on a small slice of the dev gold set with the embedded model (slow)."""

import json

import pytest
from typer.testing import CliRunner

from cai.cli.rbr import rbr_app
from cai.constitution import RBR_CLASSES, load
from cai.providers import get_model
from cai.providers.local import _engines
from cai.providers.local_slots import set_local_slots
from helpers import shared_file

GOLD = "rbr_gold_dev.jsonl"  # of the shared development data (helpers.shared_file)


@pytest.mark.slow
def test_eval_on_gold_slice_with_embedded_model(tmp_path):
    gold = shared_file(GOLD)
    args = ["eval", str(gold), "--grader", "local", "--limit", "3", "--out", str(tmp_path / "store"),
            "--output", str(tmp_path / "graded.jsonl"), "--json", "--quiet"]
    res = CliRunner().invoke(rbr_app, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    props = [p.id for p in load("rbr-safety").propositions]  # the default grading constitution
    assert sorted(out["propositions"]) == sorted(props)
    for m in out["propositions"].values():
        assert m["n"] == 3
        for k in ("accuracy", "precision", "recall", "f1", "auc"):
            assert m[k] is None or 0.0 <= m[k] <= 1.0
    overall = out["overall"]
    assert overall["judgements"] == 3 * len(props) and 0.0 <= overall["accuracy"] <= 1.0
    assert overall["methods"].get("logprobs", 0) > 0  # the embedded model gives logprobs
    usage = out["usage"]
    assert usage["per_response"]["calls"] >= len(props) and usage["calls_made"] >= 3 * len(props)
    graded = [json.loads(x) for x in (tmp_path / "graded.jsonl").read_text().splitlines()]
    assert len(graded) == 3 and all(g["class"] in RBR_CLASSES for g in graded)
    assert all("gold_class" in g and isinstance(g["reward"], float) for g in graded)
    # A second run is answered from the store.
    again = CliRunner().invoke(rbr_app, args, catch_exceptions=False)
    second = json.loads(again.stdout)
    assert second["usage"]["calls_made"] == 0 and second["overall"] == overall


@pytest.mark.slow
def test_eval_sends_a_responses_questions_to_the_batched_engine_together(tmp_path):
    """With slots, rbr eval keeps one response's questions in flight together: the engine decodes several at
    once and copies the evaluated response into the other questions' slots."""
    gold = shared_file(GOLD)
    set_local_slots(5)  # a slot count no other test uses, so the engine's stats are this test's
    try:
        args = ["eval", str(gold), "--grader", "local", "--limit", "1", "--out", str(tmp_path / "store"), "--json",
                "--quiet"]
        res = CliRunner().invoke(rbr_app, args, catch_exceptions=False)
    finally:
        set_local_slots(None)
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["overall"]["methods"].get("logprobs", 0) > 0
    stats = _engines[(str(get_model("local").path), 5)].stats
    # The first question's slot holds the response once evaluated; the others start from a copy of it (waiting
    # for it if they are placed while it is still being evaluated, which depends on timing, so not asserted).
    assert stats["max_active"] == 5 and stats["copied"] > 0
