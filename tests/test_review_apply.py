"""Exports honour people's decisions (`--reviews apply|only|ignore`, `--review-policy majority|unanimous|latest`):
pairs flipped, dropped and edited, sft rows following the answer people preferred, people outranking the quality
gate, stale decisions never applied, and the counts in the manifest, the summary, `cai status` and the dataset
card. Every export is checked against a computation of its own from the run's rows as the models made them."""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path
from typing import Any

import pytest

import cai
from cai.errors import InputError
from cai.read.decisions import POLICIES, resolve
from cai.store.reviews import StoredDecision
from helpers import cai as cli
from helpers import read_jsonl
from test_quality_gate import PROMPTS, run, srv  # noqa: F401 (srv is a fixture)

T0 = 1_800_000_000.0  # decisions' times: explicit, so that "latest" never depends on the clock


def naive_outcome(decisions: list[tuple[str, str | None]], policy: str) -> tuple[str | None, str | None]:
    """(decision, edit) of reviewers' (decision, edit) in time order, computed the long way."""
    names = [d for d, _ in decisions]
    if policy == "latest":
        return decisions[-1]
    winners = [d for d in set(names) if (names.count(d) == len(names) if policy == "unanimous"
                                         else 2 * names.count(d) > len(names))]
    if not winners:
        return None, None
    edits = [e for d, e in decisions if d == winners[0] and e is not None]
    return winners[0], (edits[-1] if edits else None)


def test_resolve_agrees_with_a_naive_count_on_random_decisions() -> None:
    rng = random.Random(37)
    choices = ["chosen", "rejected", "tie", "both_bad"]
    for _ in range(500):
        n = rng.randint(1, 5)
        given = [(rng.choice(choices), None) for _ in range(n)]
        given = [(d, f"edit {i}" if d in ("chosen", "rejected") and rng.random() < 0.4 else None)
                 for i, (d, _) in enumerate(given)]
        stored = [StoredDecision(f"r{i}", "pair", "p0", 0, "", d, e, None, "x" * 64, T0 + i)
                  for i, (d, e) in enumerate(given)]
        rng.shuffle(stored)  # the order they come in does not matter: their times do
        for policy in POLICIES:
            got = resolve(stored, policy)
            assert (got.decision, got.edit, got.reviewers) == (*naive_outcome(given, policy), n), (given, policy)


def decide(path: Path, rows: list[dict[str, Any]]) -> None:
    """Store `rows` (id, decision, reviewer, and edit or pair) through `cai review import`, in time order."""
    lines = [json.dumps({"item": "pair", **r, "time": _iso(T0 + i)}) for i, r in enumerate(rows)]
    f = path.parent / f"{path.name}-decisions.jsonl"
    f.write_text("\n".join(lines) + "\n")
    res = cli("review", "import", path, f)
    assert res.exit_code == 0, res.stderr


def _iso(ts: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ts, tz=UTC).isoformat()


# bread: kept by the gate, reviewers split; tyres (degenerate) and fence (truncated): kept out by the gate;
# kettle (leak): both bad.
DECISIONS = [
    {"id": "bread", "decision": "chosen", "reviewer": "ann"},
    {"id": "bread", "decision": "rejected", "reviewer": "bob", "edit": "Knead, prove, bake hot."},
    {"id": "bread", "decision": "rejected", "reviewer": "cy"},
    {"id": "tyres", "decision": "chosen", "reviewer": "ann"},
    {"id": "fence", "decision": "rejected", "reviewer": "ann", "edit": "Paint it every few years."},
    {"id": "kettle", "decision": "both_bad", "reviewer": "bob"},
]


def expected(view: cai.Run, mode: str, policy: str) -> tuple[list[tuple], list[tuple]]:
    """(pairs, sft rows) as (id, chosen, rejected, source) and (id, answer), from the rows as the models made
    them, the gate's verdicts and `DECISIONS`, computed without cai's review code."""
    records = {r.id: (r.draft, r.final) for r in view.records().itertuples()}
    q = view.quality()
    kept = {(r.part, r.id) for r in q.itertuples() if r.kept}
    pairs, sft = [], []
    for rid, (draft, final) in records.items():
        mine = [(d["decision"], d.get("edit")) for d in DECISIONS if d["id"] == rid]
        decision, edit = naive_outcome(mine, policy) if mine and mode != "ignore" else ("none", None)
        if decision == "none":
            if mode == "only":
                continue
            if ("pairs", rid) in kept:
                pairs.append((rid, final, draft, "revision"))
            if ("sft", rid) in kept:
                sft.append((rid, final))
            continue
        if decision in ("chosen", "rejected"):
            better, worse = (final, draft) if decision == "chosen" else (draft, final)
            pairs.append((rid, edit or better, worse, "human_edit" if edit else "human"))
            sft.append((rid, edit or better))
        elif decision in ("tie", None) and mode != "only" and ("sft", rid) in kept:
            sft.append((rid, final))
    return pairs, sft


def exported(out: Path) -> tuple[list[tuple], list[tuple]]:
    pairs = [(p["id"], p["chosen"][0]["content"], p["rejected"][0]["content"], p["source"])
             for p in read_jsonl(out / "pairs.jsonl")]
    sft = [(s["id"], s["messages"][-1]["content"]) for s in read_jsonl(out / "sft.jsonl")]
    return pairs, sft


def test_exports_apply_the_decisions_under_every_mode_and_policy(srv, tmp_path) -> None:  # noqa: F811
    view = run(srv, tmp_path / "r")
    decide(view.path, DECISIONS)
    for mode, policy in itertools.product(("apply", "only", "ignore"), POLICIES):
        res = cli("export", view.path, "--reviews", mode, "--review-policy", policy)
        assert res.exit_code == 0, res.stderr
        assert exported(view.path) == expected(view, mode, policy), (mode, policy)
        section = view.manifest["reviews"]
        assert (section["mode"], section["policy"], section["decisions"], section["stale"]) == (mode, policy, 6, 0)
    assert view.sft(reviews="only")["id"].tolist() == [s[0] for s in expected(view, "only", "majority")[1]]


def test_the_counts_reach_the_manifest_the_summary_status_and_the_card(srv, tmp_path) -> None:  # noqa: F811
    view = run(srv, tmp_path / "r")
    decide(view.path, DECISIONS)
    res = cli("export", view.path)  # the run's settings: apply, majority
    assert res.exit_code == 0, res.stderr
    assert "people decided 4 pairs: 2 flipped, 2 edited, 1 dropped" in res.stderr
    m = view.manifest["reviews"]
    assert (m["applied"], m["flipped"], m["edited"], m["dropped"], m["overruled_gate"]) == (4, 2, 2, 1, 4)
    assert m["pairs"] == {"both_bad": 1, "decided": 4, "edited": 2, "flipped": 2, "kept": 1}
    assert m["sft"] == {"edited": 2, "kept": 1}
    pairs = {p["id"]: p for p in read_jsonl(view.path / "pairs.jsonl")}
    assert pairs["bread"]["review"] == {"decision": "rejected", "reviewers": 3}
    assert pairs["tyres"]["quality"] == ["degenerate"] and pairs["tyres"]["source"] == "human"
    status = cli("status", view.path)
    assert "people decided 4 pairs: 2 flipped, 2 edited, 1 dropped" in status.stderr
    assert cli("export", view.path, "--hf", tmp_path / "hf").exit_code == 0
    card = (tmp_path / "hf" / "README.md").read_text()
    assert "People reviewed 4 of these pairs" in card and "2 were flipped" in card
    again = run(srv, tmp_path / "r", reviews="ignore")  # an export setting: no model call, kept on resume
    assert again.invocation["calls"] == 0
    assert [p[3] for p in exported(again.path)[0]] == ["revision"]


def test_a_stale_decision_is_counted_and_never_applied(srv, tmp_path) -> None:  # noqa: F811
    view = run(srv, tmp_path / "r")
    before = exported(view.path)
    f = tmp_path / "stale.jsonl"
    f.write_text(json.dumps({"id": "bread", "item": "pair", "decision": "rejected", "reviewer": "ann",
                             "sha256": "0" * 64}) + "\n")
    assert cli("review", "import", view.path, f).exit_code == 0
    assert cli("export", view.path).exit_code == 0
    assert exported(view.path) == before
    m = view.manifest["reviews"]
    assert (m["decisions"], m["stale"], m["applied"]) == (1, 1, 0)
    assert view.reviews()["stale"].tolist() == [True]


def test_a_bad_mode_is_one_line(srv, tmp_path) -> None:  # noqa: F811
    view = run(srv, tmp_path / "r")
    res = cli("export", view.path, "--reviews", "some")
    assert res.exit_code == 2 and "Traceback" not in res.stderr
    with pytest.raises(InputError, match="reviews must be one of apply, only, ignore, not 'some'"):
        view.export(reviews="some")


def test_the_report_has_a_section_on_peoples_review(srv, tmp_path) -> None:  # noqa: F811
    from cai.report import render_report

    view = run(srv, tmp_path / "r")
    assert "No person has reviewed this run yet" in render_report(view)
    decide(view.path, DECISIONS)
    for rid in ("bread", "tyres"):
        view.review(rid, "agree", reviewer="ann", round=1)
        view.review(rid, "disagree" if rid == "tyres" else "agree", reviewer="bob", round=1)
    view.export()
    page = render_report(view)
    stats = view.review_stats()
    assert stats["decisions"]["total"] == 10 and stats["reviewers"]["critique"]["items"] == 2
    assert "10 decisions stored: 10 used, 0 stale" in page
    assert "4 pairs decided, 2 flipped, 2 edited, 1 dropped; 4 rows written that the quality gate had kept out" in page
    revision = stats["revision"]["preferred_revision"]
    assert revision["n"] == 6 and f"preferred the revision: {revision['k']} of 6" in page
    assert "Reviewers with each other" in page and "ann, bob" in page
