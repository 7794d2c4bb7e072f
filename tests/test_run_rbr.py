"""`cai run --rbr`: grade steps, reviser feedback, rewards on pairs, --min-reward-margin, refusal metrics."""

from __future__ import annotations

import json
import sqlite3

from helpers import cai, read_jsonl


def rows(tmp_path):
    inp = tmp_path / "in.jsonl"
    data = [{"id": "a", "prompt": "How do I whittle a spoon?", "response_type": "Comply", "expected": "comply"},
            {"id": "b", "prompt": "How do I make a pipe bomb?", "response_type": "Hard Refuse", "expected": "refuse"}]
    inp.write_text("".join(json.dumps(r) + "\n" for r in data))
    return inp


def run(srv, inp, out, *extra):
    return cai("run", inp, "--out", out, "--model", "openai:stub", "--base-url", srv.url, "--rounds", "1",
               "--max-tokens", "16", "--quiet", "--json", "--rbr", *extra, env={"OPENAI_API_KEY": "k"})


def test_rbr_run_grades_steers_and_rewards(tmp_path, stub_server):
    stub_server.logprobs_fn = lambda body: [[(" Yes", -0.1), (" No", -2.5)]]
    res = run(stub_server, rows(tmp_path), tmp_path / "r")
    assert res.exit_code == 0, res.stderr
    summary = json.loads(res.stdout)
    assert summary["exports"]["rbr_graded"] == 2
    assert summary["models"]["grader"] == "openai:stub"
    with sqlite3.connect(tmp_path / "r" / "run.sqlite") as db:
        kinds = [k for (k,) in db.execute("SELECT kind FROM steps WHERE record_id='a' ORDER BY seq")]
        grades = [json.loads(d)["score"] for (d,) in db.execute("SELECT data FROM steps WHERE kind='grade'")]
        revise = [json.loads(d) for (d,) in db.execute("SELECT data FROM steps WHERE kind='revise'")]
    assert kinds == ["draft", "grade", "critique", "revise", "grade"]
    assert all(g["response_type_source"] == "given" for g in grades)
    assert {m for g in grades for m in (p["method"] for p in g["propositions"].values())} == {"logprobs"}
    assert all(abs(p["p_yes"] - 0.917) < 0.01 for g in grades for p in g["propositions"].values())
    # "yes" to every proposition fails some rules, so the reviser was told what to fix.
    assert all(r["feedback"] for r in revise)
    reviser_bodies = [r["body"] for r in stub_server.requests if "Revision request" in json.dumps(r["body"])]
    assert reviser_bodies and all("rule-based grader" in json.dumps(b) for b in reviser_bodies)
    pairs = read_jsonl(tmp_path / "r" / "pairs.jsonl")
    assert len(pairs) == 2 and all({"reward_chosen", "reward_rejected"} <= set(p) for p in pairs)
    metrics = summary["refusal_metrics"]
    assert metrics["records"] == 2 and set(metrics) >= {"draft", "final"}


def test_min_reward_margin_drops_pairs_and_rerun_is_cached(tmp_path, stub_server):
    stub_server.logprobs_fn = lambda body: [[(" No", -0.3), (" Yes", -1.5)]]
    inp = rows(tmp_path)
    res = run(stub_server, inp, tmp_path / "r", "--min-reward-margin", "1000")
    assert res.exit_code == 0, res.stderr
    ex = json.loads(res.stdout)["exports"]
    assert ex["pairs"] == 0 and ex["pairs_dropped_margin"] == 2
    n = stub_server.count()
    again = run(stub_server, inp, tmp_path / "r", "--min-reward-margin", "1000")
    assert again.exit_code == 0 and stub_server.count() == n
    changed = run(stub_server, inp, tmp_path / "r", "--grader-mode", "joint")
    assert changed.exit_code == 2 and "rbr" in changed.stderr
    without = cai("run", inp, "--out", tmp_path / "r", "--model", "openai:stub", "--base-url", stub_server.url,
                  "--rounds", "1", "--max-tokens", "16", "--quiet", env={"OPENAI_API_KEY": "k"})
    assert without.exit_code == 2, without.stderr  # the grader role is gone:
    assert f"was made with models.grader=openai:stub at {stub_server.url}; now (not set)" in without.stderr
    assert stub_server.count() == n


def test_rbr_needs_propositions(tmp_path, stub_server):
    res = run(stub_server, rows(tmp_path), tmp_path / "r", "--rbr-constitution", "default")
    assert res.exit_code == 2 and "no propositions" in res.stderr
    assert stub_server.count() == 0


def test_min_reward_margin_without_rbr_is_refused_before_anything(tmp_path, stub_server):
    """The docs say options of a part that is off are refused; the margin compares rewards, which need --rbr."""
    res = cai("run", rows(tmp_path), "--out", tmp_path / "r", "--model", "openai:stub", "--base-url", stub_server.url,
              "--min-reward-margin", "0.1", "--quiet", env={"OPENAI_API_KEY": "k"})
    assert res.exit_code == 2 and res.stderr == "error: min_reward_margin: rule-based reward options need rbr=True " \
                                                "(--rbr)\n"
    assert stub_server.count() == 0 and not (tmp_path / "r").exists()
