"""AI preference labels: the judge's soft labels in both orders (scripted logprobs and votes on the loopback stub
server), --cot clamping, K-wise pairs and near-ties, `cai label` on files and runs, `cai judge-eval`, and runs
with --candidates on the stub and on the embedded model."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from cai.limits import LABELS_BYTES
from cai.store.steps import Kind
from helpers import REPO, cai, read_jsonl, shared_file
from reliability import KEY, cai_run, one_line_error
from servers import StubServer

ROWS = [{"id": "q1", "prompt": "Which river is longest?",
         "responses": ["BAD one: I refuse.", "GOOD: the Nile, by most measures.", "BAD two: rivers are wet."]}]


def a_part(body: dict[str, Any]) -> str:
    """The text the judge was shown as (A)."""
    user = body["messages"][-1]["content"]
    return user.split("Response (B)")[0].split("Response (A)")[1]


def scripted(p_good_first: float = 0.8, p_good_second: float = 0.7):
    """Logprobs of a judge that prefers the response containing GOOD: P(A) = p_good_first when it is (A), and
    P(B) = p_good_second when it is (B); 0.5 when neither is GOOD."""
    def fn(body: dict[str, Any]) -> list[list[tuple[str, float]]]:
        if "Response (A)" not in body["messages"][-1]["content"]:  # a grader's yes/no question (--rbr)
            return [[("Yes", math.log(0.6)), ("No", math.log(0.4))]]
        a = a_part(body)
        p = p_good_first if "GOOD" in a else 1 - p_good_second if "GOOD" in body["messages"][-1]["content"] else 0.5
        return [[("A", math.log(p)), (" B", math.log(1 - p)), ("C", math.log(1e-4))]]
    return fn


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)


def write_rows(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_soft_labels_average_both_orders_and_rank_k_candidates(env, tmp_path):
    with StubServer(logprobs_fn=scripted()) as srv:
        out = tmp_path / "lab"
        r = cai("label", write_rows(tmp_path / "rows.jsonl", ROWS), "--judge", "openai:stub", "--base-url", srv.url,
                "--out", out, "--json")
        assert r.exit_code == 0, r.stderr
        labels = {(c["a"], c["b"]): c for c in read_jsonl(out / "labels.jsonl")}
        assert len(labels) == 3 and all(c["method"] == "logprobs" for c in labels.values())
        bad_good = labels[(0, 1)]  # BAD shown first: P(A) = 1 - 0.7; GOOD shown first: P(A) = 0.8
        assert bad_good["p_ab"] == pytest.approx(0.3) and bad_good["p_ba"] == pytest.approx(0.8)
        assert bad_good["p"] == pytest.approx((0.3 + 1 - 0.8) / 2)
        assert labels[(0, 2)]["p"] == pytest.approx(0.5)  # two BADs: a tie
        pairs = read_jsonl(out / "pairs.jsonl")
        assert {(p["chosen"][0]["content"][:4], p["rejected"][0]["content"][:7]) for p in pairs} == {
            ("GOOD", "BAD one"), ("GOOD", "BAD two")}
        first = next(p for p in pairs if "one" in p["rejected"][0]["content"])
        assert first["source"] == "ai_label" and first["score_chosen"] > first["score_rejected"]
        assert first["label"]["p_chosen_first"] == pytest.approx(0.8)
        assert first["label"]["p_chosen_second"] == pytest.approx(0.7)
        assert json.loads(r.stdout)["near_ties"] == 1  # the two BADs
        again = cai("label", tmp_path / "rows.jsonl", "--judge", "openai:stub", "--base-url", srv.url, "--out", out,
                    "--min-margin", "0.49", "--json")
        info = json.loads(again.stdout)
        assert info["calls_made"] == 0 and info["pairs"] == 0 and info["near_ties"] == 3  # cached; all near-ties


def test_votes_and_chain_of_thought_are_clamped(env, tmp_path):
    def reply(kind: str, body: dict[str, Any]) -> str:
        good_first = "GOOD" in a_part(body)
        if "Answer: A" in body["messages"][-1]["content"] or "think it through" in str(body):
            return f"Response {'A' if good_first else 'B'} is more accurate.\nAnswer: {'A' if good_first else 'B'}"
        return "A" if good_first else "B"

    rows = write_rows(tmp_path / "rows.jsonl", [{**ROWS[0], "responses": ROWS[0]["responses"][:2]}])
    with StubServer(reply_fn=reply) as srv:
        for cot, expect in ((False, (0.0, 1.0, 0.0)), (True, (0.4, 0.6, 0.4))):
            out = tmp_path / f"lab-{cot}"
            args = ["label", rows, "--judge", "anthropic:stub", "--base-url", srv.anthropic_url, "--out", out,
                    "--votes", "2", *(["--cot"] if cot else [])]
            assert cai(*args).exit_code == 0
            (c,) = read_jsonl(out / "labels.jsonl")
            assert c["method"] == "votes" and (c["p_ab"], c["p_ba"], c["p"]) == pytest.approx(expect)


def test_judge_eval_measures_agreement_and_position_bias(env, tmp_path):
    rows = write_rows(tmp_path / "pairs.jsonl", [
        {"id": f"r{i}", "prompt": f"Question {i}?", "chosen": [{"role": "assistant", "content": f"GOOD {i}"}],
         "rejected": f"BAD {i}", "section": "s1" if i < 2 else "s2"} for i in range(4)])
    with StubServer(logprobs_fn=scripted(0.9, 0.6)) as srv:
        r = cai("judge-eval", rows, "--judge", "openai:stub", "--base-url", srv.url, "--out", tmp_path / "je", "--json")
    info = json.loads(r.stdout)
    assert info["agreement"] == 1.0 and info["undecided"] == 0 and info["by_tag"]["s1"]["pairs"] == 2
    # GOOD first: A wins (0.9); BAD first: B wins (P(A) = 0.4): the first-shown option won half the asks
    assert info["position_bias"] == {"first_shown_wins": 0.5, "orders_disagree": 0.0}
    assert info["mean_confidence"] == pytest.approx(((0.9 + 1 - 0.4) / 2) - 0.5)

    with StubServer(reply_fn=lambda kind, body: "A") as srv:  # always the first-shown option
        r = cai("judge-eval", rows, "--judge", "anthropic:stub", "--base-url", srv.anthropic_url, "--votes", "1",
                "--out", tmp_path / "je2", "--json")
    info = json.loads(r.stdout)
    assert info["undecided"] == 4 and info["agreement"] is None
    assert info["position_bias"] == {"first_shown_wins": 1.0, "orders_disagree": 1.0}


def test_a_judge_that_always_picks_the_first_shown_answer_decides_nothing(env, tmp_path):
    """P(A) = 0.9 in both orders averages to 0.49999999999999994: float noise, not a preference."""
    rows = write_rows(tmp_path / "pairs.jsonl", [
        {"id": f"r{i}", "prompt": f"Question {i}?", "chosen": f"GOOD {i}", "rejected": f"BAD {i}"} for i in range(2)])
    first = [[("A", math.log(0.9)), ("B", math.log(0.1))]]
    with StubServer(logprobs_fn=lambda body: first) as srv:
        r = cai("judge-eval", rows, "--model", "openai:stub", "--base-url", srv.url, "--out", tmp_path / "je", "--json")
    assert r.exit_code == 0, r.stderr
    info = json.loads(r.stdout)
    assert (info["decided"], info["undecided"], info["agreement"]) == (0, 2, None)
    assert info["position_bias"] == {"first_shown_wins": 1.0, "orders_disagree": 1.0}
    assert info["methods"] == {"logprobs": 2}


def test_a_run_with_candidates_labels_them_and_resumes_without_calls(env, tmp_path):
    prompts = write_rows(tmp_path / "p.jsonl", [{"id": f"p{i}", "prompt": f"Tell me about tides {i}."}
                                                for i in range(3)])
    out = tmp_path / "run"

    def by_seed(kind: str, body: dict[str, Any]) -> str | None:  # samples differ by their seed
        if body.get("response_format"):
            return None
        return f"{'GOOD ' if body.get('seed') == 1 else ''}Tides answer {body.get('seed')}: the moon pulls."

    with StubServer(logprobs_fn=scripted(), reply_fn=by_seed) as srv:
        args = ["run", prompts, "--out", out, "--model", "openai:stub", "--base-url", srv.url, "--rounds", "1",
                "--max-tokens", "16", "--candidates", "3", "--quiet", "--json"]
        r = cai_run(*args)
        assert r.returncode == 0, r.stderr
        manifest = json.loads(r.stdout)
        again = json.loads(cai_run(*args).stdout)
    assert again["this_invocation"]["calls"] == 0
    ex = manifest["exports"]
    assert ex["labels"] == 9 and ex["pairs_ai_label"] + ex["label_near_ties"] == 9  # 3 comparisons per record
    labels = read_jsonl(out / "labels.jsonl")
    assert {c["source_a"] for c in labels} == {"draft", "sample"} and {c["judge"] for c in labels} == {"openai:stub"}
    assert all(c["response_a"] != c["response_b"] for c in labels)  # three different samples per record
    pairs = read_jsonl(out / "pairs.jsonl")
    assert {p["source"] for p in pairs} <= {"revision", "ai_label"} and all("score_chosen" in p for p in pairs)
    assert ex["pairs_ai_label"] == 6  # the GOOD sample over the two others, in each record
    hf = tmp_path / "hf"  # the Hugging Face dataset has the same pairs, AI-labeled ones included
    assert cai("export", out, "--hf", hf).exit_code == 0
    import pyarrow.parquet as pq

    table = pq.read_table(next((hf / "pairs").glob("*.parquet")))
    assert table.num_rows == len(pairs) and table.column("source").to_pylist() == [p["source"] for p in pairs]


def test_cai_label_adds_labels_to_an_existing_run(env, tmp_path):
    prompts = write_rows(tmp_path / "p.jsonl", [{"id": "p0", "prompt": "Tell me about tides."}])
    out = tmp_path / "run"
    with StubServer(logprobs_fn=scripted()) as srv:
        assert cai_run("run", prompts, "--out", out, "--model", "openai:stub", "--base-url", srv.url, "--rounds", "2",
                       "--max-tokens", "16", "--quiet").returncode == 0
        assert not (out / "labels.jsonl").exists()
        r = cai("label", out, "--judge", "openai:stub", "--base-url", srv.url, "--json")
        assert r.exit_code == 0, r.stderr
    labels = read_jsonl(out / "labels.jsonl")
    sources = {c["source_a"] for c in labels} | {c["source_b"] for c in labels}
    assert "draft" in sources and "revision" in sources  # the draft and its revisions, each text once
    n = len({c["response_a"] for c in labels} | {c["response_b"] for c in labels})
    assert len(labels) == n * (n - 1) // 2
    assert json.loads((out / "manifest.json").read_text())["exports"]["labels"] == len(labels)


def test_labeling_options_are_checked_in_one_line(env, tmp_path):
    prompts = write_rows(tmp_path / "p.jsonl", [{"id": "p0", "prompt": "Hi."}])
    r = cai_run("run", prompts, "--out", tmp_path / "a", "--judge", "openai:x")
    assert r.returncode == 2 and "need two or more candidates" in one_line_error(r.stderr)
    r = cai_run("run", prompts, "--out", tmp_path / "b", "--candidates", "2", "--rank-by", "rbr")
    assert r.returncode == 2 and "needs rule-based rewards" in one_line_error(r.stderr)
    bad = write_rows(tmp_path / "rows.jsonl", [{"prompt": "Q", "responses": ["only one"]}])
    r = cai_run("label", bad, "--out", tmp_path / "c")
    assert r.returncode == 2 and one_line_error(r.stderr).startswith(f"error: {bad}:1: `responses`")
    nocomp = tmp_path / "c.yaml"
    nocomp.write_text("name: plain\nprinciples:\n  - id: p\n    critique: c?\n    revision: r.\n")
    r = cai_run("run", prompts, "--out", tmp_path / "d", "--candidates", "2", "--constitution", nocomp)
    assert r.returncode == 2 and "no `comparisons:` section" in one_line_error(r.stderr)


@pytest.mark.parametrize("command", ["label", "judge-eval"])
def test_a_rows_file_over_the_size_limit_is_refused_before_it_is_read(env, tmp_path, command):
    big = tmp_path / "rows.jsonl"
    with big.open("wb") as fh:
        fh.truncate(LABELS_BYTES + 1)  # sparse: nothing written to disk
    r = cai(command, big, "--out", tmp_path / "out", *(["--judge", "openai:x"] if command == "judge-eval" else []))
    assert r.exit_code == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip() == f"error: {big}: {LABELS_BYTES + 1:,} bytes, over the 512 MiB limit for a labels file"
    assert not (tmp_path / "out").exists()


def test_candidates_on_the_embedded_model(tmp_path):
    """End to end on SmolLM2-135M: two candidates per prompt, judged in both orders from its logprobs."""
    out = tmp_path / "run"
    r = cai_run("run", REPO / "examples" / "prompts.jsonl", "--out", out, "--limit", "1", "--rounds", "1",
                "--max-tokens", "24", "--candidates", "2", "--quiet", "--json")
    assert r.returncode == 0, r.stderr
    (c,) = read_jsonl(out / "labels.jsonl")
    assert c["method"] == "logprobs" and c["judge"] == "local" and 0.0 <= c["p"] <= 1.0
    assert c["p"] == pytest.approx((c["p_ab"] + 1 - c["p_ba"]) / 2)
    manifest = json.loads(r.stdout)
    ex, judged = manifest["exports"], manifest["quality"].get("ai_label_pairs", {"rows": 0, "kept": 0})
    # the one comparison is a near-tie or a pair, which the quality gate keeps or keeps out (24 tokens: often cut)
    assert ex["labels"] == 1 and judged["rows"] + ex["label_near_ties"] == 1 and judged["kept"] == ex["pairs_ai_label"]


def test_judge_eval_on_the_dev_pairs_with_the_embedded_model(tmp_path):
    """The dev pairs (GOOD vs BAD responses from the Model Spec), the first 6, judged by the embedded model: the
    figures are whatever the 135M model gives; the arithmetic must hold."""
    pairs = shared_file("modelspec_pairs_dev.jsonl")
    r = cai_run("judge-eval", pairs, "--judge", "local", "--limit", "6",
                "--out", tmp_path / "je", "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["pairs"] == 6 == info["decided"] + info["undecided"] and len(info["rows"]) == 6
    decided = [x for x in info["rows"] if x["p"] != 0.5]
    if decided:
        assert info["agreement"] == round(sum(x["p"] > 0.5 for x in decided) / len(decided), 4)
    assert 0.0 <= info["position_bias"]["first_shown_wins"] <= 1.0


def test_revisions_as_candidates_and_ranking_by_judge_plus_rbr(env, tmp_path):
    prompts = write_rows(tmp_path / "p.jsonl", [{"id": "p0", "prompt": "Tell me about tides."}])
    with StubServer(logprobs_fn=scripted()) as srv:
        out = tmp_path / "rev"
        r = cai_run("run", prompts, "--out", out, "--model", "openai:stub", "--base-url", srv.url, "--rounds", "2",
                    "--max-tokens", "16", "--candidates-from", "revisions", "--quiet")
        assert r.returncode == 0, r.stderr
        labels = read_jsonl(out / "labels.jsonl")
        assert {c["source_a"] for c in labels} | {c["source_b"] for c in labels} == {"draft", "revision"}

    def good_sample(kind: str, body: dict[str, Any]) -> str | None:  # the second sample is the GOOD one
        if body.get("response_format"):
            return None
        return "GOOD: the moon pulls the sea." if body.get("seed") == 1 else f"Tides answer {body.get('seed')}."

    with StubServer(logprobs_fn=scripted(), reply_fn=good_sample) as srv:
        out = tmp_path / "rbr"
        r = cai_run("run", prompts, "--out", out, "--model", "openai:stub", "--base-url", srv.url, "--rounds", "1",
                    "--max-tokens", "16", "--candidates-from", "samples+revisions", "--candidates", "2", "--rbr",
                    "--rank-by", "judge+rbr", "--quiet")
        assert r.returncode == 0, r.stderr
    pairs = [p for p in read_jsonl(out / "pairs.jsonl") if p["source"] == "ai_label"]
    assert pairs and {p["label"]["rank_by"] for p in pairs} == {"judge+rbr"}
    assert all(p["chosen"][0]["content"].startswith("GOOD") for p in pairs)
    from cai.store import Store

    store = Store.open_run(out, readonly=True)
    (label,) = [s for s in store.steps("p0") if s.kind is Kind.LABEL]
    store.close()
    step = label.data
    assert set(step["rankings"]) == {"judge", "rbr", "judge+rbr"}
    assert all("reward" in c for c in step["candidates"])
    judge, rbr, both = (step["rankings"][k]["scores"] for k in ("judge", "rbr", "judge+rbr"))
    assert rbr == [c["reward"] for c in step["candidates"]]
    assert len(both) == len(judge) == len(step["candidates"])
