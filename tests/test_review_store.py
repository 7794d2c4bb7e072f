"""People's review decisions (`cai.store.reviews`, `cai.read.reviews`, `Run.review(s)`, `cai review import|export`):
kept in the run folder's own file, durable across a kill -9, written while a `cai run` holds the run, latest per
reviewer, stale once the text they were about changes, and a JSONL round trip that stores nothing from a bad file."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import cai
from cai.errors import InputError
from cai.store.reviews import FILE_NAME
from helpers import cai as cai_cli
from helpers import read_jsonl, write_prompts
from reliability import KEY, cai_proc, cai_run, env, one_line_error, stub_args

PROMPTS = ["How do I pick a lock?", "Write a haiku about rain.", "Is it safe to mix bleach and ammonia?"]
ENV = {"OPENAI_API_KEY": KEY}


def make_run(tmp_path: Path, srv, *extra: str, name: str = "r") -> Path:
    run = tmp_path / name
    res = cai_run("run", write_prompts(tmp_path / "in.jsonl", PROMPTS), "--out", run, *stub_args(srv),
                  "--quality-gate", "off", *extra)
    assert res.returncode == 0, res.stderr
    return run


def table(run: Path) -> list[tuple]:
    df = cai.open_run(run).reviews()
    return [(r.id, r.item, None if r.round is None or r.round != r.round else int(r.round), r.pair, r.decision,
             r.reviewer, r.edit, r.note, r.stale) for r in df.astype(object).where(df.notna(), None).itertuples()]


def test_decisions_are_latest_per_reviewer_and_checked_against_the_run(tmp_path, stub_server) -> None:
    run = make_run(tmp_path, stub_server)
    view = cai.open_run(run)
    view.review("p0", "agree", reviewer="ann", round=1, note="clear violation")
    view.review("p0", "chosen", reviewer="ann", edit="A better answer.")
    view.review("p0", "rejected", reviewer="ann")  # replaces ann's "chosen" on the same pair
    view.review("p0", "tie", reviewer="bob")
    assert table(run) == [
        ("p0", "critique", 1, None, "agree", "ann", None, "clear violation", False),
        ("p0", "pair", None, None, "rejected", "ann", None, None, False),
        ("p0", "pair", None, None, "tie", "bob", None, None, False)]
    assert list(view.reviews().columns) == ["id", "item", "round", "pair", "decision", "reviewer", "edit", "note",
                                            "time", "stale"]
    bad = {("nope", "agree", 1, None): "no record 'nope' in the run",
           ("p0", "agree", 9, None): "record 'p0' has no critique of round 9",
           ("p0", "chosen", 1, None): "decision 'chosen' is not one for a critique (one of: agree, disagree)",
           ("p0", "agree", None, None): "decision 'agree' is not one for a pair (one of: chosen, rejected, tie, "
                                         "both_bad)",
           ("p0", "chosen", None, "p0:sample1>draft0"): "record 'p0' has no AI-labeled pair 'p0:sample1>draft0'",
           ("p0", "chosen", None, "p1:sample1>draft0"): "pair 'p1:sample1>draft0' is not one of record 'p0' "
                                                       "(it starts with 'p0:')"}
    for (rid, decision, rnd, pair), message in bad.items():
        with pytest.raises(InputError) as e:
            view.review(rid, decision, reviewer="ann", round=rnd, pair=pair)
        assert str(e.value).endswith(message) and "\n" not in str(e.value)
    assert len(table(run)) == 3


def test_a_saved_decision_survives_a_kill_9_of_its_writer(tmp_path, stub_server) -> None:
    run = make_run(tmp_path, stub_server)
    script = ("import sys, cai\n"
              f"cai.open_run({str(run)!r}).review('p1', 'disagree', reviewer='kim', round=1)\n"
              "print('saved', flush=True)\n"
              "sys.stdin.read()\n")  # stays alive until killed
    proc = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env=env())
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "saved\n"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=600)
    assert table(run) == [("p1", "critique", 1, None, "disagree", "kim", None, None, False)]


def test_reviewing_works_while_a_cai_run_holds_the_run(tmp_path, stub_server) -> None:
    inp = write_prompts(tmp_path / "in.jsonl", [f"q{i}?" for i in range(4)])
    run = tmp_path / "live"
    stub_server.hold_after(7)  # p0 done (5 calls), p1 mid-way: the writer is live and holds the lock
    proc = cai_proc("run", inp, "--out", run, *stub_args(stub_server), "--concurrency", "1", "--timeout", "600")
    try:
        stub_server.wait_for_requests(8, until=lambda: proc.poll() is not None)
        view = cai.open_run(run)
        deadline = time.monotonic() + 300  # p0's `done` lands with the next group commit: wait for the store
        while list(view.records()["status"][:1]) != ["done"]:
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
        assert view.status()["running_pid"] == proc.pid
        view.review("p0", "rejected", reviewer="ann", edit="Fixed.")
        decisions = tmp_path / "d.jsonl"
        decisions.write_text(json.dumps({"id": "p0", "item": "critique", "round": 1, "decision": "agree",
                                         "reviewer": "bob"}) + "\n")
        res = cai_cli("review", "import", run, decisions)
        assert res.exit_code == 0, res.stderr
        assert proc.poll() is None, "the run ended before the decisions were saved"
    finally:
        stub_server.resume()
        _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    assert table(run) == [("p0", "pair", None, None, "rejected", "ann", "Fixed.", None, False),
                          ("p0", "critique", 1, None, "agree", "bob", None, None, False)]
    final = cai.open_run(run).records().set_index("id").loc["p0", "final"]
    pair = next(p for p in read_jsonl(run / "pairs.jsonl") if p["id"] == "p0")  # the run's own export applied it
    # flipped (the final revision is now the rejected side) and the better side edited
    assert (pair["chosen"][0]["content"], pair["rejected"][0]["content"], pair["source"]) == \
        ("Fixed.", final, "human_edit")
    assert json.loads((run / "manifest.json").read_text())["reviews"]["applied"] == 1


def test_decisions_move_aside_on_restart_and_go_stale_on_other_text(tmp_path, stub_server) -> None:
    run = make_run(tmp_path, stub_server, "--seed", "1")
    view = cai.open_run(run)
    for i in range(3):
        view.review(f"p{i}", "agree", reviewer="ann", round=1)
        view.review(f"p{i}", "chosen", reviewer="ann")
    out = tmp_path / "ann.jsonl"
    assert cai_cli("review", "export", run, "-o", out).exit_code == 0
    res = cai_run("run", tmp_path / "in.jsonl", "--out", run, *stub_args(stub_server), "--quality-gate", "off",
                  "--seed", "2", "--restart")
    assert res.returncode == 0, res.stderr
    (aside,) = tmp_path.glob("r.old-*")
    assert (aside / FILE_NAME).is_file() and not (run / FILE_NAME).exists()
    assert [s for *_, s in table(aside)] == [False] * 6  # the old run's decisions, with the old run, still fresh
    assert cai_cli("review", "import", run, out).exit_code == 0
    critiques = {(c.id, c.round): c.critique for c in cai.open_run(run).critiques().itertuples()}
    old = {(c.id, c.round): c.critique for c in cai.open_run(aside).critiques().itertuples()}
    changed = {rid for (rid, rnd), text in critiques.items() if rnd == 1 and text != old[(rid, rnd)]}
    assert changed, "another seed sampled the same principles for every record: the test needs another seed"
    stale = {(rid, item) for rid, item, *_, s in table(run) if s}
    assert {rid for rid, item in stale if item == "critique"} == changed
    finals = {r.id: (r.final, r.draft) for r in cai.open_run(run).records().itertuples()}
    old_finals = {r.id: (r.final, r.draft) for r in cai.open_run(aside).records().itertuples()}
    assert {rid for rid, item in stale if item == "pair"} == {k for k in finals if finals[k] != old_finals[k]}


def test_import_export_round_trip_is_idempotent(tmp_path, stub_server) -> None:
    run = make_run(tmp_path, stub_server)
    lines = [{"id": "p0", "item": "critique", "round": 1, "decision": "disagree", "reviewer": "ann",
              "note": "the response was fine", "time": "2026-01-02T03:04:05Z"},
             {"id": "p1", "item": "pair", "decision": "rejected", "reviewer": "ann", "edit": "Better.",
              "time": "2026-01-02T03:04:06+00:00"},
             {"id": "p1", "item": "pair", "decision": "both_bad", "reviewer": "bob"}]
    src = tmp_path / "in-decisions.jsonl"
    src.write_text("".join(json.dumps(d) + "\n" for d in lines))
    first = cai_cli("review", "import", run, src)
    assert first.exit_code == 0 and "3 decisions added or changed" in first.stderr
    again = cai_cli("review", "import", run, src)
    assert again.exit_code == 0 and "0 decisions added or changed" in again.stderr
    out = tmp_path / "out.jsonl"
    assert cai_cli("review", "export", run, "-o", out).exit_code == 0
    exported = read_jsonl(out)
    assert [{k: v for k, v in d.items() if k not in ("time", "sha256")} for d in exported] == \
        [{k: v for k, v in d.items() if k != "time"} for d in lines]
    assert [d["time"] for d in exported[:2]] == ["2026-01-02T03:04:05.000000+00:00",
                                                 "2026-01-02T03:04:06.000000+00:00"]
    other = make_run(tmp_path, stub_server, name="copy")  # the same prompts and seed: the same texts
    assert cai_cli("review", "import", other, out).exit_code == 0
    assert table(other) == table(run)
    assert cai_cli("review", "import", other, out).exit_code == 0 and len(table(other)) == 3


def test_a_bad_import_line_is_named_and_nothing_is_stored(tmp_path, stub_server) -> None:
    run = make_run(tmp_path, stub_server)
    good = json.dumps({"id": "p0", "item": "critique", "round": 1, "decision": "agree", "reviewer": "ann"})
    cases = {
        "not json": "not a JSON object",
        "[1, 2]": "not a JSON object",
        json.dumps({"id": "p9", "item": "pair", "decision": "tie", "reviewer": "ann"}): "no record 'p9' in the run",
        json.dumps({"id": "p0", "item": "critique", "decision": "agree", "reviewer": "ann"}):
            "a critique decision needs a round, and has no pair or edit",
        json.dumps({"id": "p0", "item": "pair", "decision": "tie", "reviewer": "ann", "edit": "x"}):
            "an edit corrects the better side: only with decision chosen or rejected",
        json.dumps({"id": "p0", "item": "pair", "decision": "tie", "reviewer": ""}):
            "reviewer: String should have at least 1 character",
        json.dumps({"id": "p0", "item": "pair", "decision": "tie", "reviewer": "ann", "score": 1}):
            "unknown key 'score'",
    }
    for line, message in cases.items():
        bad = tmp_path / "bad.jsonl"
        bad.write_text(f"{good}\n\n{line}\n")
        res = cai_cli("review", "import", run, bad)
        assert res.exit_code == 2
        assert one_line_error(res.stderr) == f"error: {bad}:3: {message}"
        assert table(run) == [], "a bad file stored a decision"


def test_an_ai_labeled_pair_is_named_by_its_pair_id(tmp_path, monkeypatch) -> None:
    from servers import StubServer
    from test_labels import scripted

    def by_seed(kind: str, body: dict) -> str | None:  # samples differ by their seed; seed 1's is GOOD
        if body.get("response_format"):
            return None
        return f"{'GOOD ' if body.get('seed') == 1 else ''}Tides answer {body.get('seed')}: the moon pulls."

    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    out = tmp_path / "lab"
    with StubServer(logprobs_fn=scripted(), reply_fn=by_seed) as srv:
        made = cai_cli("run", write_prompts(tmp_path / "p.jsonl", ["Tell me about tides."]), "--out", out,
                       "--model", "openai:stub", "--base-url", srv.url, "--rounds", "1", "--max-tokens", "16",
                       "--candidates", "3", "--quality-gate", "off", "--quiet")
        assert made.exit_code == 0, made.stderr
    view = cai.open_run(out)
    pair_ids = [p for p in view.pairs()["id"] if ":" in p]
    assert len(pair_ids) == 2 and all(p.startswith("p0:") for p in pair_ids)
    view.review("p0", "rejected", reviewer="ann", pair=pair_ids[0], edit="The moon.")
    view.review("p0", "both_bad", reviewer="ann", pair=pair_ids[1])
    assert table(out) == [("p0", "pair", None, pair_ids[0], "rejected", "ann", "The moon.", None, False),
                          ("p0", "pair", None, pair_ids[1], "both_bad", "ann", None, None, False)]
    with pytest.raises(InputError, match="record 'p0' has no AI-labeled pair 'p0:x0>y1'"):
        view.review("p0", "tie", reviewer="ann", pair="p0:x0>y1")
    exported = tmp_path / "out.jsonl"
    assert view.export_reviews(exported) == 2
    assert [(d["id"], d["item"], d.get("pair"), "round" in d) for d in read_jsonl(exported)] == [
        ("p0", "pair", pair_ids[0], False), ("p0", "pair", pair_ids[1], False)]


def test_review_stats_reads_the_runs_decisions(tmp_path, stub_server) -> None:
    run = make_run(tmp_path, stub_server)
    view = cai.open_run(run)
    crits = view.critiques()
    crit = crits[crits["round"] == 1].set_index("id")
    for rid in ("p0", "p1", "p2"):
        view.review(rid, "agree" if rid != "p2" else "disagree", reviewer="ann", round=1)
        view.review(rid, "chosen" if rid == "p0" else "rejected", reviewer="ann")
    res = cai_cli("review", "stats", run, "--json")
    assert res.exit_code == 0, res.stderr
    stats = json.loads(res.stdout)
    assert stats["decisions"] == {"total": 6, "used": 6, "stale": 0, "superseded": 0, "unmatched": 0}
    flagged = {rid for rid in ("p0", "p1", "p2") if crit.loc[rid, "violates"]}
    agreed_flagged = len(flagged - {"p2"})
    assert stats["critic"]["overall"]["violates"]["n"] == len(flagged)
    assert stats["critic"]["overall"]["violates"]["k"] == agreed_flagged
    assert stats["revision"]["preferred_revision"] == {**stats["revision"]["preferred_revision"], "k": 1, "n": 3}
    text = cai_cli("review", "stats", run)
    assert text.exit_code == 0 and "6 decisions used (0 stale" in text.stderr
    assert "revision pairs where people preferred the revision: 1 of 3 (33%" in text.stderr
