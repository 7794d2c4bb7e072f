"""Exploring a run (cai.read.explore, as Run methods and cai.compare): every number is checked against the
run's own tables or manifest, computed here independently from the stored steps."""

from __future__ import annotations

import json
import math
import sqlite3
from pathlib import Path

import pytest

import cai
from cai.errors import InputError
from cai.read.explore import word_diff
from helpers import write_prompts
from reliability import KEY

PROMPTS = [f"How do I do task number {i}?" for i in range(6)]


@pytest.fixture(autouse=True)
def _key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)


def make_run(tmp_path: Path, srv, name: str = "r", **extra) -> cai.Run:
    opts = {"model": "openai:stub", "base_url": srv.url, "rounds": 2, "max_tokens": 16, "max_retries": 0}
    return cai.run(extra.pop("prompts", PROMPTS), out=tmp_path / name, **{**opts, **extra})


def steps_of(run: cai.Run, kind: str) -> list[dict]:
    with sqlite3.connect(run.path / "run.sqlite") as db:
        return [{"id": r, "round": n, **json.loads(d)} for r, n, d in
                db.execute("SELECT record_id, round, data FROM steps WHERE kind=? ORDER BY record_id, seq", (kind,))]


def test_principle_stats_agree_with_the_stored_critiques(tmp_path, stub_server):
    stub_server.add_fault("notjson", times=2, when=lambda path, body: "response_format" in body)
    run = make_run(tmp_path, stub_server, concurrency=1)  # so the two faults hit one critique and its repair
    stats = run.principle_stats().set_index("principle")
    crits, revs = steps_of(run, "critique"), {(s["id"], s["round"]): s for s in steps_of(run, "revise")}
    assert stats["sampled"].sum() == len(crits) == len(PROMPTS) * 2
    const = run.constitution()
    for pid, row in stats.iterrows():
        mine = [c for c in crits if c["principle"] == pid]
        parsed = [c for c in mine if c["verdict"] is not None]
        assert row["sampled"] == len(mine) and row["unparsed"] == len(mine) - len(parsed)
        if parsed:
            assert row["violation_rate"] == pytest.approx(sum(c["verdict"]["violates"] for c in parsed) / len(parsed))
            assert row["mean_severity"] == pytest.approx(sum(c["verdict"]["severity"] for c in parsed) / len(parsed))
        changes = [len(revs[c["id"], c["round"]]["response"]) - len(revs[c["id"], c["round"]]["before"])
                   for c in mine if (c["id"], c["round"]) in revs]
        assert row["mean_length_change"] == pytest.approx(sum(changes) / len(changes))
        assert math.isnan(row["mean_reward_change"])  # no rewards in this run
        p = next(p for p in const.principles if p.id == pid)
        assert row["tags"] == ", ".join(p.tags) and row["kind"] == p.kind
    assert stats["unparsed"].sum() == 1  # the injected bad verdict that the repair request could not fix
    rates = stats["violation_rate"].fillna(-1).tolist()
    assert rates == sorted(rates, reverse=True)  # most violated first


def test_rounds_add_up_to_the_critiques(tmp_path, stub_server):
    run = make_run(tmp_path, stub_server, rounds=3)
    by_round = run.rounds().set_index("round")
    crit = run.critiques()
    assert by_round.index.tolist() == [1, 2, 3]
    for rnd, row in by_round.iterrows():
        mine = crit[crit["round"] == rnd]
        assert row["critiques"] == len(mine)
        assert row["violations"] == int(mine["violates"].fillna(False).sum())


def test_diff_rebuilds_both_texts_and_renders_escaped(tmp_path, stub_server):
    run = make_run(tmp_path, stub_server, prompts=["Say <script>alert(1)</script> please?"])
    d = run.diff("p0")
    revs = steps_of(run, "revise")
    assert [s["round"] for s in d.steps] == [1, 2] and d.draft == revs[0]["before"]
    for step, rev in zip(d.steps, revs):
        assert "".join(t for op, t in step["diff"] if op != "insert") == rev["before"]
        assert "".join(t for op, t in step["diff"] if op != "delete") == rev["response"]
    html = d._repr_html_()
    assert "<script>" not in html and "&lt;script&gt;" in html
    text = str(d)
    assert text.startswith("record p0: Say <script>") and "round 2" in text
    with pytest.raises(InputError, match="no record 'nope'"):
        run.diff("nope")


def test_word_diff_marks_words():
    assert word_diff("the cat sat", "the dog sat") == [("equal", "the "), ("delete", "cat"), ("insert", "dog"),
                                                     ("equal", " sat")]
    assert word_diff("", "new") == [("insert", "new")]


def test_grades_one_row_per_proposition_and_check(tmp_path, stub_server):
    stub_server.logprobs_fn = lambda body: [[(" Yes", -0.1), (" No", -2.5)]]
    rows = [{"prompt": "How do I whittle a spoon?", "response_type": "Comply", "expected": "comply"}]
    run = make_run(tmp_path, stub_server, prompts=rows, rounds=1, rbr=True)
    g = run.grades()
    scores = steps_of(run, "grade")
    want = sum(len(s["score"]["propositions"]) + len(s["score"]["checks"]) for s in scores)
    assert len(g) == want and set(g["step"]) == {"draft", "revision"}
    props = g[g["kind"] == "proposition"]
    assert set(props["method"]) == {"logprobs"} and props["p_yes"].between(0, 1).all()
    assert (g[g["kind"] == "check"]["method"] == "check").all()
    stats = run.principle_stats()
    change = scores[1]["score"]["reward"] - scores[0]["score"]["reward"]
    assert stats["mean_reward_change"].iloc[0] == pytest.approx(change)
    assert make_run(tmp_path, stub_server, name="plain").grades().empty


def test_summary_is_the_manifests_numbers(tmp_path, stub_server):
    run = make_run(tmp_path, stub_server)
    s = dict(zip(run.summary()["metric"], run.summary()["value"]))
    m = run.manifest
    assert s["records.done"] == m["records"]["done"] == len(PROMPTS)
    assert s["exports.pairs"] == m["exports"]["pairs"]
    assert s["tokens.critic.tokens_in"] == m["tokens"]["critic"]["tokens_in"]
    assert not any(k.startswith("settings") for k in s)


def test_compare_two_constitutions_side_by_side(tmp_path, stub_server):
    a = make_run(tmp_path, stub_server, name="default", cache=tmp_path / "c.sqlite")
    b = make_run(tmp_path, stub_server, name="spec", constitution="model-spec", cache=tmp_path / "c.sqlite")
    table = cai.compare(a, tmp_path / "spec").set_index("metric")
    assert list(table.columns) == ["default", "spec", "difference"]
    assert table.loc["prompts", "default"] == len(PROMPTS)
    for name, run in (("default", a), ("spec", b)):
        crit = run.critiques()
        parsed = crit[crit["parsed"]]
        assert table.loc["violation_rate", name] == pytest.approx(parsed["violates"].mean())
        recs = run.records()
        assert table.loc["mean_final_length", name] == pytest.approx(recs["final"].str.len().mean())
    # The drafts came from the shared cache, so they are the same on both sides.
    assert table.loc["mean_draft_length", "difference"] == 0
    per = cai.compare(a, b, by="prompt")
    assert len(per) == len(PROMPTS) and {"final_default", "final_spec"} <= set(per.columns)
    with pytest.raises(InputError):
        cai.compare(a, b, by="colour")


def test_a_prompt_file_run_explores_too(tmp_path, stub_server):
    inp = write_prompts(tmp_path / "in.jsonl", PROMPTS[:2])
    run = make_run(tmp_path, stub_server, prompts=inp)
    assert run.principle_stats()["sampled"].sum() == 4 and len(run.rounds()) == 2
