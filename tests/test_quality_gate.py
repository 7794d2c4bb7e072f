"""The quality gate end to end on the loopback stub with the real OpenAI SDK: flagged pairs and sft rows are kept
out of every export, every row carries its flags, the counts reach the manifest, the summary line, `cai status`,
the report and `Run`, and changing `--quality-gate` rewrites the exports without a model call."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

import cai
from helpers import cai as cli
from helpers import read_jsonl
from servers import StubServer

# topic → the reviser's answer (None: the stub's own text, cut at --max-tokens)
REVISIONS: dict[str, str | None] = {
    "bread": "Mix flour, water, yeast and salt, knead for ten minutes, let it rise, then bake at 220 C.",
    "tyres": "It is not helpful. " * 10,
    "kettle": "The user is asking about descaling a kettle. The response should give the steps.",
    "fence": None,
}
PROMPTS = [{"id": t, "prompt": f"How do I look after my {t}?"} for t in REVISIONS]


def reply(kind: str, body: dict[str, Any]) -> str | None:
    """Drafts are plain and complete; each topic's revision is as in REVISIONS; verdicts are the stub's."""
    text = json.dumps(body.get("messages", []))
    if "response_format" in body:
        return None
    topic = next(t for t in REVISIONS if t in text)
    if "You rewrite" in text:
        return REVISIONS[topic]
    return f"Here is how to look after your {topic}: check it weekly and clean it gently."


@pytest.fixture()
def srv():
    with StubServer(reply_words=40, reply_fn=reply) as s:
        yield s


def run(srv: StubServer, out: Path, **options: Any) -> cai.Run:
    return cai.run(PROMPTS, out=out, model="openai:stub", base_url=srv.url, rounds=1, max_tokens=16, seed=1,
                   **options)


def ids(path: Path) -> list[str]:
    return [r["id"] for r in read_jsonl(path)]


def test_flagged_rows_are_kept_out_and_counted_everywhere(srv, tmp_path):
    r = run(srv, tmp_path / "r")
    assert ids(r.path / "pairs.jsonl") == ids(r.path / "sft.jsonl") == ["bread"]
    assert read_jsonl(r.path / "pairs.jsonl")[0]["quality"] == [] == read_jsonl(r.path / "sft.jsonl")[0]["quality"]
    m = r.manifest
    q = m["quality"]
    assert q["gate"] == "default" and "degenerate" in q["keeps_out"] and "worse_by_reward" not in q["keeps_out"]
    assert q["pairs"]["flagged"] == {"truncated": 1, "degenerate": 1, "leak": 1}
    assert q["pairs"]["dropped"] == q["sft"]["dropped"] == {"truncated": 1, "degenerate": 1, "leak": 1}
    assert (q["pairs"]["rows"], q["pairs"]["kept"], q["sft"]["rows"], q["sft"]["kept"]) == (4, 1, 4, 1)
    ex = m["exports"]
    assert (ex["pairs"], ex["pairs_dropped"], ex["pairs_dropped_leak"], ex["sft"], ex["sft_dropped"]) == (1, 3, 1, 1, 3)

    table = r.quality().set_index(["part", "id"])
    assert table.loc[("pairs", "tyres"), "flags"] == ["degenerate"] and not table.loc[("pairs", "tyres"), "kept"]
    assert table.loc[("sft", "fence"), "out"] == ["truncated"] and table.loc[("sft", "bread"), "kept"]
    assert list(r.pairs()["quality"]) == [[]] and r.records().set_index("id").loc["kettle", "pair_quality"] == ["leak"]

    status = cli("status", r.path)
    assert status.exit_code == 0
    assert "exports: 1 sft (3 kept out: truncated 1, degenerate 1, leak 1), 1 pairs (3 kept out: truncated 1, " \
           "degenerate 1, leak 1) (quality gate: default)" in status.stderr
    assert cli("status", r.path, "--json").stdout and json.loads(cli("status", r.path, "--json").stdout)["quality"] == q

    page = tmp_path / "report.html"
    assert cli("report", r.path, "-o", page).exit_code == 0
    html = page.read_text(encoding="utf-8")
    assert '<section id="quality">' in html and 'href="#quality"' in html
    for flag in ("truncated", "degenerate", "leak"):
        assert f'data-flag="{flag}"' in html
    assert "It is not helpful. It is not helpful." in html  # the degenerate example


def test_the_summary_line_says_what_was_kept_out(srv, tmp_path):
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps(p) + "\n" for p in PROMPTS))
    r = cli("run", inp, "--out", tmp_path / "r", "--model", "openai:stub", "--base-url", srv.url, "--rounds", "1",
            "--max-tokens", "16", "--quiet")
    assert r.exit_code == 0, r.stderr
    line = next(x for x in r.stderr.splitlines() if x.startswith("wrote "))
    assert "1 sft (3 kept out: truncated 1, degenerate 1, leak 1), 1 pairs (3 kept out: truncated 1, " \
           "degenerate 1, leak 1)" in line
    assert "--quality-gate off" not in r.stderr  # some rows were kept: no hint


def test_a_run_whose_every_row_is_kept_out_says_how_to_see_them(srv, tmp_path):
    inp = tmp_path / "in.jsonl"
    inp.write_text(json.dumps(PROMPTS[1]) + "\n")  # a revision that loops
    args = ["run", inp, "--out", tmp_path / "r", "--model", "openai:stub", "--base-url", srv.url, "--rounds", "1",
            "--max-tokens", "16", "--quiet"]
    r = cli(*args)
    assert r.exit_code == 0, r.stderr
    lines = r.stderr.splitlines()
    assert "0 sft (1 kept out: degenerate 1), 0 pairs (1 kept out: degenerate 1)" in lines[-2]
    assert lines[-1].startswith("the quality gate kept out every row") and "--quality-gate off" in lines[-1]
    calls = srv.count()
    r = cli(*args, "--quality-gate", "off")
    assert r.exit_code == 0 and srv.count() == calls and "kept out every row" not in r.stderr
    assert [p["quality"] for p in read_jsonl(tmp_path / "r" / "pairs.jsonl")] == [["degenerate"]]


def test_changing_the_gate_rewrites_the_exports_without_a_call(srv, tmp_path):
    first = run(srv, tmp_path / "r")
    calls = srv.count()
    off = run(srv, tmp_path / "r", quality_gate="off")
    assert srv.count() == calls and off.manifest["quality"]["gate"] == "off"
    pairs = {p["id"]: p["quality"] for p in read_jsonl(off.path / "pairs.jsonl")}
    assert pairs == {"bread": [], "tyres": ["degenerate"], "kettle": ["leak"], "fence": ["truncated"]}
    assert len(ids(off.path / "sft.jsonl")) == 4 and off.manifest["exports"]["pairs_dropped"] == 0
    plain = run(srv, tmp_path / "r")  # a plain re-run keeps the run's gate
    assert plain.manifest["quality"]["gate"] == "off" and len(ids(plain.path / "pairs.jsonl")) == 4
    again = run(srv, tmp_path / "r", quality_gate="default")
    assert srv.count() == calls and again.manifest["exports"] == first.manifest["exports"]


def test_parquet_rows_carry_their_flags(srv, tmp_path):
    r = run(srv, tmp_path / "r", quality_gate="off", format="parquet")
    table = pq.read_table(r.path / "pairs.parquet")
    assert "quality" in table.column_names
    assert dict(zip(table["id"].to_pylist(), table["quality"].to_pylist(), strict=True))["tyres"] == ["degenerate"]
    assert pq.read_table(r.path / "sft.parquet")["quality"].to_pylist().count([]) == 1


def test_an_unknown_gate_is_refused(tmp_path):
    inp = tmp_path / "in.jsonl"
    inp.write_text(json.dumps(PROMPTS[0]) + "\n")
    r = cli("run", inp, "--out", tmp_path / "r", "--quality-gate", "loose")
    assert r.exit_code == 2 and "loose" in r.stderr and "Traceback" not in r.stderr
    with pytest.raises(cai.errors.InputError, match="quality_gate"):
        cai.run([PROMPTS[0]], out=tmp_path / "r2", quality_gate="loose")
