"""AI preference labels as the library and the report show them: `Run.labels()` (one row per comparison),
`Run.pairs()` with the AI-labeled pairs, and the report's "AI preference labels" section, for runs made against
the loopback stub server with a scripted judge (P(A) from the quoted responses, with a bias towards (A))."""

from __future__ import annotations

import hashlib
import html
import json
import math
import re

import pytest

import cai
from cai.report import render_report, write_report
from helpers import read_jsonl
from reliability import KEY, cai_run, stub_args
from test_report import Page, browser  # noqa: F401 - the module-scoped browser fixture

PROMPTS = ["How do I pick a lock?", "Write a haiku about rain.", "Is it safe to mix bleach and ammonia?",
           "Explain photosynthesis to a child."]
BROWSER_PROMPTS = ["Name three rivers.", "What is a prime number?"]
K = 3
COLUMNS = ["id", "a", "b", "source_a", "source_b", "response_a", "response_b", "principle", "p_ab", "p_ba", "p",
           "method", "judge"]
QUOTED = re.compile(r"Response \((A|B)\), between the markers (.+?) and (.+?):\n")


@pytest.fixture(autouse=True)
def _key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)


def quality(text: str) -> float:
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF


def scripted_p_a(first: str, second: str) -> float:
    """The scripted judge's P(A): the better-hashed response wins, and the one shown first gets +0.15."""
    return min(0.95, max(0.05, 0.65 + 0.6 * (quality(first) - quality(second))))


def quoted(user: str) -> dict[str, str]:
    """The two responses quoted in a judge prompt, by letter (between each one's own marker lines)."""
    out = {}
    for m in QUOTED.finditer(user):
        letter, open_, close = m.groups()
        start = user.index(open_ + "\n", m.end()) + len(open_) + 1
        out[letter] = user[start:user.index("\n" + close, start)]
    return out


def judge_logprobs(body: dict) -> list[list[tuple[str, float]]]:
    """The stub's answer to a one-token A/B question with logprobs: "A" and "B" at the scripted P(A)."""
    user = body["messages"][-1]["content"]
    shown = quoted(user) if "A or B" in user else {}
    if set(shown) != {"A", "B"}:
        return [[("ok", -0.1)]]
    p = scripted_p_a(shown["A"], shown["B"])
    return [[("A", math.log(p)), ("B", math.log(1.0 - p))]]


def sampled_reply(kind: str, body: dict) -> str | None:
    """Drafts and candidate samples that differ by seed (the stub's own replies depend on the messages only,
    so every sample would equal the draft and be judged once); every other request gets the stub's reply."""
    msgs = body.get("messages") or []
    if len(msgs) == 1 and msgs[0].get("content") in PROMPTS + BROWSER_PROMPTS:
        return f"Reply with seed {body.get('seed')}: " + hashlib.sha256(repr(body.get("seed")).encode()).hexdigest()
    return None


def scripted(srv) -> None:
    """The stub as a judge with logprobs (`judge_logprobs`) whose generator's samples differ by seed."""
    srv.logprobs_fn, srv.reply_fn = judge_logprobs, sampled_reply


def options(srv, **more) -> dict:
    return {"model": "openai:stub", "base_url": srv.url, "rounds": 1, "max_tokens": 16, "max_retries": 2, **more}


def expected_bias(labels) -> dict[str, str]:
    """The report's position-bias lines, computed from `Run.labels()` rows."""
    asks, n = 2 * len(labels), len(labels)
    first = int((labels["p_ab"] > 0.5).sum() + (labels["p_ba"] > 0.5).sum())
    second = int((labels["p_ab"] < 0.5).sum() + (labels["p_ba"] < 0.5).sum())
    same = int((((labels["p_ab"] > 0.5) & (labels["p_ba"] > 0.5)) |
                ((labels["p_ab"] < 0.5) & (labels["p_ba"] < 0.5))).sum())
    return {
        "first-shown-wins": f"the first-shown response won {first} of {asks} ({first / asks:.1%}) single-order asks, "
                            f"the second-shown {second}, undecided {asks - first - second} (no bias: 50%)",
        "order-disagreement": f"{same} of {n} ({same / n:.1%}) comparisons, whose two orders disagree: both picked "
                              "the first-shown response, or both the second-shown",
        "comparisons": f"{n} over {labels['id'].nunique()} records, each asked in both orders ({asks} single-order "
                       "asks)",
    }


def stats_in(page: str) -> dict[str, str]:
    """The labels section's facts, by their data-stat key, as text."""
    return {k: html.unescape(v) for k, v in re.findall(r'<dd data-stat="([\w-]+)">(.*?)</dd>', page)}


def test_labels_table_pairs_and_report_section(tmp_path, stub_server):
    scripted(stub_server)
    run = cai.run(PROMPTS, out=tmp_path / "labeled", candidates=K, **options(stub_server))
    labels = run.labels()
    assert list(labels.columns) == COLUMNS
    assert labels.groupby("id").size().to_dict() == {rid: K * (K - 1) // 2 for rid in run.records()["id"]}
    for _, g in labels.groupby("id"):
        assert sorted(zip(g["a"], g["b"])) == [(i, j) for i in range(K) for j in range(i + 1, K)]
    assert set(labels["source_a"]) | set(labels["source_b"]) == {"draft", "sample"}
    assert (labels["method"] == "logprobs").all() and (labels["judge"] == "openai:stub").all()
    # each order's P(A) is what the scripted judge answered for the responses in that order; p averages both
    for r in labels.to_dict("records"):
        assert r["p_ab"] == pytest.approx(scripted_p_a(r["response_a"], r["response_b"]), abs=1e-9)
        assert r["p_ba"] == pytest.approx(scripted_p_a(r["response_b"], r["response_a"]), abs=1e-9)
        assert r["p"] == pytest.approx((r["p_ab"] + 1 - r["p_ba"]) / 2, abs=1e-12)
    rows = read_jsonl(run.path / "labels.jsonl")
    assert {c: labels[c].tolist() for c in COLUMNS} == {c: [r[c] for r in rows] for c in COLUMNS}

    # pairs: each record's revision pair, then its AI-labeled pairs, as in pairs.jsonl
    pairs, exported = run.pairs(), read_jsonl(run.path / "pairs.jsonl")
    assert list(pairs["id"]) == [r["id"] for r in exported]
    assert list(pairs["source"]) == [r["source"] for r in exported]
    ai = pairs[pairs["source"] == "ai_label"]
    assert len(ai) == run.manifest["exports"]["pairs_ai_label"] > 0
    assert set(pairs["source"]) == {"revision", "ai_label"}
    assert pairs.loc[pairs["source"] == "revision", "label"].isna().all()
    assert all(lab["margin"] > 0 and lab["rank_by"] == "judge" and lab["method"] == "logprobs" for lab in ai["label"])
    assert (ai["chosen_text"] != ai["rejected_text"]).all()

    # the report's section: its position-bias figures are those of the same rows
    page = render_report(run)
    assert page.count('<section id="labels">') == 1 and "<h2>AI preference labels</h2>" in page
    stats, want = stats_in(page), expected_bias(labels)
    assert {k: stats[k] for k in want} == want
    first = int((labels["p_ab"] > 0.5).sum() + (labels["p_ba"] > 0.5).sum())
    assert 0 < first < 2 * len(labels), "the scripted judge should not always pick one position"
    assert stats["methods"] == f"logprobs {len(labels)}"
    mean = (labels["p"] - 0.5).abs().mean()
    assert stats["mean-confidence"].startswith(f"mean |P − 0.5| = {mean:.3f}")
    per_principle = labels["principle"].value_counts()
    table = re.search(r'<table class="label-principles">(.*?)</table>', page, re.S).group(1)
    assert dict(re.findall(r"<tr><td>([\w-]+)</td><td class=num>(\d+)</td>", table)) == \
        {p: str(n) for p, n in per_principle.items()}
    assert 'data-plot="ai-preference-labels"' in page.split('<section id="labels">')[1]
    assert '<a href="#labels">' in page


def test_a_run_without_labels_has_no_labels_section(tmp_path, stub_server):
    run = cai.run(PROMPTS[:2], out=tmp_path / "plain", **options(stub_server))
    labels = run.labels()
    assert labels.empty and list(labels.columns) == COLUMNS
    pairs = run.pairs()
    assert not {"label", "score_chosen", "score_rejected"} & set(pairs.columns) and set(pairs["source"]) == {"revision"}
    assert list(pairs["id"]) == [r["id"] for r in read_jsonl(run.path / "pairs.jsonl")]
    page = render_report(run)
    assert 'id="labels"' not in page and "AI preference labels</h2>" not in page and 'href="#labels"' not in page
    assert '<li class="omitted" data-plot="ai-preference-labels">' in page


def test_labels_section_in_a_browser(tmp_path, stub_server, browser):  # noqa: F811 - the imported fixture
    """The section renders in chromium with nothing fetched and no script error; its figures are the table's."""
    scripted(stub_server)
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps({"id": f"q{i}", "prompt": p}) + "\n" for i, p in enumerate(BROWSER_PROMPTS)))
    out = tmp_path / "run"
    res = cai_run("run", inp, "--out", out, *stub_args(stub_server), "--candidates", str(K))
    assert res.returncode == 0, res.stderr
    view = Page(browser, write_report(out))
    view.assert_clean()
    assert "ai-preference-labels" in view.plots() and "ai-preference-labels" not in view.omitted()
    w, h = view.page.locator("#labels figure.plot svg").bounding_box()["width"], \
        view.page.locator("#labels figure.plot svg").bounding_box()["height"]
    assert w > 50 and h > 50
    for key, text in expected_bias(cai.open_run(out).labels()).items():
        assert view.page.locator(f"#labels dd[data-stat='{key}']").text_content() == text
    view.page.click("a[href='#labels']")
    view.assert_clean()
