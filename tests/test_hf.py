"""`cai export RUN --hf DIR` and `Run.to_datasets()`: a run as a Hugging Face dataset (sft/ and pairs/ Parquet
and a README.md dataset card), against the loopback stub server."""

from __future__ import annotations

import errno
import json
import re
import sys
from pathlib import Path
from typing import Any

import datasets
import pytest
import yaml

import cai
from cai.errors import InputError, OutputError, RunLocked
from cai.read.hf import DATA_FILE, write_hf
from cai.store import Store
from cai.store.lock import RunLock
from helpers import cai as cli
from helpers import read_jsonl
from reliability import KEY, cai_run, one_line_error

FINGERPRINTED = DATA_FILE.replace(".parquet", "-FINGERPRINT.parquet")
PROMPTS = ["How do I pick a lock?", "Write a haiku about rain.",
           [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "Is bleach safe to mix?"}]]


@pytest.fixture(autouse=True)
def _env(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True, raising=False)


def make_run(tmp_path: Path, srv: Any, name: str = "run", **options: Any) -> cai.Run:
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps({"openai:stub": {"input": 1.5, "output": 3.0}}))
    prompts = [p if isinstance(p, list) else [{"role": "user", "content": p}] for p in PROMPTS]
    return cai.run(prompts, out=tmp_path / name, model="openai:stub", base_url=srv.url, rounds=2, max_tokens=16,
                   max_retries=2, prices=prices, **options)


def load(folder: Path, config: str, tmp_path: Path) -> datasets.Dataset:
    return datasets.load_dataset(str(folder), config, split="train", cache_dir=str(tmp_path / "hf-cache"))


def card(folder: Path) -> tuple[dict[str, Any], dict[str, str], str]:
    """The card's front matter, its provenance table (label → cell) and its body."""
    lines = (folder / "README.md").read_text(encoding="utf-8").splitlines()
    assert lines[0] == "---"
    end = lines.index("---", 1)
    body = "\n".join(lines[end + 1:])
    return yaml.safe_load("\n".join(lines[1:end])), dict(re.findall(r"^\| (.+?) \| (.*) \|$", body, re.M)), body


def assert_trl_pairs(rows: list[dict[str, Any]]) -> None:
    """TRL's conversational preference rows (DPOTrainer): prompt, chosen and rejected are message lists; the
    prompt ends with the user's turn (so a generation prompt is added), chosen and rejected are one assistant
    turn each."""
    assert rows
    for row in rows:
        for key in ("prompt", "chosen", "rejected"):
            assert all(set(m) == {"role", "content"} and isinstance(m["content"], str) for m in row[key]), row
        assert row["prompt"][-1]["role"] == "user"
        assert [m["role"] for m in row["chosen"]] == [m["role"] for m in row["rejected"]] == ["assistant"]
        assert row["chosen"] != row["rejected"]


def test_export_hf_writes_a_dataset_that_loads_as_trl_data(tmp_path, stub_server):
    def same_haiku(kind: str, body: dict[str, Any]) -> str | None:  # the revision equals the draft: no pair
        plain = not stub_server.is_structured(kind, body) and "haiku" in json.dumps(body)
        return "Rain on the roof." if plain else None

    stub_server.reply_fn = same_haiku
    run = make_run(tmp_path, stub_server)
    before = {p.name: p.read_bytes() for p in run.path.iterdir() if p.is_file() and not p.name.startswith("run.")}
    out = tmp_path / "hf" / "demo"
    res = cli("export", run.path, "--hf", out)
    assert res.exit_code == 0, res.stderr
    assert res.stderr.splitlines() == [f"wrote {out}/: 3 sft, 2 pairs and a dataset card (README.md)"]
    listed = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    assert [re.sub(r"-[0-9a-f]{16}\.parquet$", "-FINGERPRINT.parquet", p) for p in listed] == [
        "README.md", "pairs", f"pairs/{FINGERPRINTED}", "sft", f"sft/{FINGERPRINTED}"]
    # The run folder is only read: its exports and manifest are untouched, nothing was added.
    assert {p.name: p.read_bytes() for p in run.path.iterdir()
            if p.is_file() and not p.name.startswith("run.")} == before

    pairs, sft = [list(load(out, c, tmp_path)) for c in ("pairs", "sft")]
    assert_trl_pairs(pairs)
    assert pairs == read_jsonl(run.path / "pairs.jsonl")  # the exports' rows, nested, nothing lost
    assert sft == read_jsonl(run.path / "sft.jsonl")
    assert all(row["messages"][-1]["role"] == "assistant" for row in sft)
    assert [r["id"] for r in pairs] == ["p0", "p2"] and [r["id"] for r in sft] == ["p0", "p1", "p2"]
    assert pairs[1]["prompt"][0] == {"role": "developer", "content": "Be brief."}

    front, prov, body = card(out)
    assert [c["config_name"] for c in front["configs"]] == ["sft", "pairs"]
    for c in front["configs"]:
        assert c["data_files"] == [{"split": "train", "path": next(p for p in listed
                                                                   if p.startswith(c["config_name"] + "/"))}]
    assert "license" in front and front["license"] == "unknown"
    assert front["task_categories"] == ["text-generation"] and front["size_categories"] == ["n<1K"]
    assert {"cai", "constitutional-ai", "sft", "dpo"} <= set(front["tags"])
    assert "## How the pairs were made" in body and "`reward_chosen`" not in body

    m = json.loads((run.path / "manifest.json").read_text())
    ex = m["exports"]
    assert (ex["sft"], ex["pairs"], ex["pairs_dropped_unchanged"]) == (3, 2, 1)
    assert prov["sft rows"] == str(ex["sft"]) and prov["pairs"] == str(ex["pairs"])
    assert prov["pairs kept out"] == f"{ex['pairs_dropped']} (unchanged {ex['pairs_dropped_unchanged']})"
    assert prov["sft rows kept out"] == "0 (none)" and prov["quality gate"] == m["quality"]["gate"] == "default"
    assert "## Quality" in body and "`quality`" in body
    assert prov["records"] == f"{m['records']['total']} (done {m['records']['done']})"
    assert {k: prov[f"{k} model"] for k in m["models"]} == m["models"]
    assert prov["constitution"] == f"{m['constitution']['name']} (sha256 {m['constitution']['sha256']})"
    assert prov["rounds"] == str(m["settings"]["loop"]["rounds"]) and prov["seed"] == str(m["seed"])
    for role, t in m["tokens"].items():
        assert f"{role} {t['tokens_in']} in / {t['tokens_out']} out ({t['calls']} calls)" in prov["tokens"]
    assert m["estimated_cost_usd"] > 0 and prov["estimated cost (USD)"] == str(m["estimated_cost_usd"])
    assert prov["cai version"] == m["cai_version"] == cai.__version__
    assert prov["last run ended (UTC)"] == m["ended"]

    dev = tmp_path / "dev"
    assert cli("export", run.path, "--hf", dev, "--system-role-for-developer").exit_code == 0
    assert load(dev, "pairs", tmp_path)[1]["prompt"][0] == {"role": "system", "content": "Be brief."}


def test_to_datasets_gives_the_rows_of_the_folder(tmp_path, stub_server):
    run = make_run(tmp_path, stub_server)
    dd = run.to_datasets()
    assert isinstance(dd, datasets.DatasetDict) and list(dd) == ["sft", "pairs"]
    assert dd["pairs"].column_names == ["id", "prompt", "chosen", "rejected", "metadata", "quality", "source",
                                        "review"]
    assert dd["sft"].column_names == ["id", "messages", "quality"]
    assert_trl_pairs(list(dd["pairs"]))
    info = write_hf(run.path, tmp_path / "out")
    assert info["rows"] == {"sft": 3, "pairs": 3} and info["pairs_dropped"] == 0
    for name in ("sft", "pairs"):
        on_disk = load(tmp_path / "out", name, tmp_path)
        assert list(dd[name]) == list(on_disk) and dd[name].features == on_disk.features


def test_a_run_with_rule_based_rewards_has_reward_columns(tmp_path, stub_server):
    stub_server.logprobs_fn = lambda body: [[(" Yes", -0.1), (" No", -2.5)]]
    inp = tmp_path / "in.jsonl"
    rows = [("a", "How do I whittle a spoon?", "comply"), ("b", "How do I make a pipe bomb?", "refuse")]
    inp.write_text("".join(json.dumps({"id": i, "prompt": p, "expected": e}) + "\n" for i, p, e in rows))
    res = cli("run", inp, "--out", tmp_path / "r", "--model", "openai:stub", "--base-url", stub_server.url,
              "--rounds", "1", "--max-tokens", "16", "--quiet", "--rbr")
    assert res.exit_code == 0, res.stderr
    assert cli("export", tmp_path / "r", "--hf", tmp_path / "out").exit_code == 0
    pairs = load(tmp_path / "out", "pairs", tmp_path)
    assert {"reward_chosen", "reward_rejected"} <= set(pairs.column_names)
    assert list(pairs) == read_jsonl(tmp_path / "r" / "pairs.jsonl")
    assert all(isinstance(r["reward_chosen"], float) and isinstance(r["reward_rejected"], float) for r in pairs)
    _, prov, body = card(tmp_path / "out")
    assert prov["grader model"] == "openai:stub" and "`reward_chosen`" in body and "`reward_rejected`" in body
    dd = cai.open_run(tmp_path / "r").to_datasets()
    assert dd["pairs"].column_names[-2:] == ["reward_chosen", "reward_rejected"]


def test_a_folder_written_again_loads_the_new_rows(tmp_path, stub_server):
    # `datasets` caches a folder's configs under a key made of the folder's name and its card's `configs`, not of
    # the files' contents: the data files' names carry a fingerprint of their rows, so new rows get a new key.
    first = make_run(tmp_path, stub_server, name="first")
    stub_server.reply_fn = lambda kind, body: None if stub_server.is_structured(kind, body) else "Another answer."
    second = make_run(tmp_path, stub_server, name="second")
    out = tmp_path / "hf" / "demo"
    seen = []
    for run in (first, second, first):
        write_hf(run.path, out)
        assert len(list(out.glob("sft/*.parquet"))) == 1  # the older export's file is gone
        seen.append([row["messages"][-1]["content"] for row in load(out, "sft", tmp_path)])
    assert seen[1] == [row["messages"][-1]["content"] for row in read_jsonl(second.path / "sft.jsonl")]
    assert seen[0] == seen[2] != seen[1]
    assert {p.name for p in out.glob("*/*.parquet")} == {Path(p).name for p in write_hf(first.path, out)[
        "files"].values() if p.endswith(".parquet")}  # the same rows, the same names


def test_a_config_without_rows_is_left_out_and_an_empty_run_refused(tmp_path, stub_server):
    stub_server.reply_fn = lambda kind, body: None if stub_server.is_structured(kind, body) else "Same answer."
    run = make_run(tmp_path, stub_server)  # every revision equals its draft: every pair is dropped
    out = tmp_path / "out"
    (out / "pairs").mkdir(parents=True)
    (out / "pairs" / DATA_FILE).write_bytes(b"an older export")
    res = cli("export", run.path, "--hf", out, "--json")
    assert res.exit_code == 0, res.stderr
    assert json.loads(res.stdout)["rows"] == {"sft": 3, "pairs": 0}
    assert not (out / "pairs" / DATA_FILE).exists()  # stale, and `datasets` cannot load an empty split
    front, prov, body = card(out)
    assert [c["config_name"] for c in front["configs"]] == ["sft"] and prov["pairs kept out"] == "3 (unchanged 3)"
    assert "every pair was dropped" in body
    assert load(out, "sft", tmp_path).num_rows == 3
    assert run.to_datasets()["pairs"].num_rows == 0  # in memory an empty split is fine

    empty = tmp_path / "empty"
    empty.mkdir()
    Store(empty).close()  # a run folder whose store holds no record yet
    res = cai_run("export", empty, "--hf", tmp_path / "none")
    assert res.returncode == 2
    assert one_line_error(res.stderr) == f"error: {empty}: no finished record yet: nothing to write"
    assert sorted(p.name for p in (tmp_path / "none").rglob("*")) == ["pairs", "sft"]  # no file, no temp file


def test_a_run_whose_rows_the_gate_kept_out_says_so(tmp_path, stub_server):
    stub_server.reply_words = 40  # above max_tokens (16): the stub cuts each reply there, finish_reason "length"
    run = make_run(tmp_path, stub_server)  # every reply is cut at max_tokens: the gate keeps out every row
    res = cai_run("export", run.path, "--hf", tmp_path / "out")
    assert res.returncode == 2
    assert one_line_error(res.stderr) == (
        f"error: {run.path}: no sft row to write: the quality gate kept out all 3 (truncated 3); `cai run` again "
        "with --quality-gate off exports them with their flags (no model call), or review them (docs/review.md)")
    calls = stub_server.count()
    make_run(tmp_path, stub_server, quality_gate="off")  # the same run: its exports rewritten, no model call
    assert stub_server.count() == calls
    write_hf(run.path, tmp_path / "out")
    assert [row["quality"] for row in load(tmp_path / "out", "sft", tmp_path)] == [["truncated"]] * 3


def test_an_unwritable_folder_is_one_line_exit_2(tmp_path, stub_server):
    run = make_run(tmp_path, stub_server)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    res = cai_run("export", run.path, "--hf", blocker / "hf")
    assert res.returncode == 2
    assert one_line_error(res.stderr) == f"error: {blocker / 'hf'}: cannot write export: Not a directory"
    refused = cai_run("export", run.path, "--hf", tmp_path / "out", "--format", "parquet")
    assert refused.returncode == 2 and "--format" in one_line_error(refused.stderr)
    assert not (tmp_path / "out").exists()


def test_a_failed_write_keeps_the_previous_dataset(tmp_path, stub_server, monkeypatch):
    run = make_run(tmp_path, stub_server)
    out = tmp_path / "out"
    write_hf(run.path, out)
    before = {str(p): p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def disk_full(self, row):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("cai.read.parquet.ParquetRows.add", disk_full)
    with pytest.raises(OutputError) as info:
        write_hf(run.path, out)
    assert str(info.value) == f"{out / 'sft' / DATA_FILE}: cannot write export: No space left on device"
    assert {str(p): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before  # no temp file left


def test_it_reads_while_another_process_holds_the_run(tmp_path, stub_server):
    run = make_run(tmp_path, stub_server)
    with RunLock(run.path):  # as `cai run` holds it: the normal export must wait, the dataset need not
        with pytest.raises(RunLocked):
            run.export()
        assert write_hf(run.path, tmp_path / "out")["rows"]["pairs"] == 3
        assert run.to_datasets()["pairs"].num_rows == 3


def test_without_datasets_to_datasets_is_one_input_error(tmp_path, stub_server, monkeypatch):
    run = make_run(tmp_path, stub_server)
    monkeypatch.setitem(sys.modules, "datasets", None)  # `import datasets` now fails as if not installed
    with pytest.raises(InputError) as info:
        run.to_datasets()
    assert str(info.value) == "to_datasets() needs the 'hf' extra (the datasets package): pip install 'cai[hf]'"
    assert cli("export", run.path, "--hf", tmp_path / "out").exit_code == 0  # the folder needs only pyarrow


def test_the_card_shows_user_controlled_strings_as_typed(tmp_path, stub_server):
    """The run folder's, the models' and the constitution's names are the user's text: rendered as Markdown
    with raw HTML allowed (as the Hub renders cards), none of them becomes a tag, a link or emphasis."""
    from markdown_it import MarkdownIt

    layer = tmp_path / "layer.yaml"
    layer.write_text("name: 'x*[click](javascript:alert(1))*'\nextends: default\n")
    name = "run<img src=x onerror=alert(1)>_a_|b"
    make_run(tmp_path, stub_server, name=name, generator="openai:stub<b>bold</b>", constitution=[str(layer)])
    write_hf(tmp_path / name, tmp_path / "hf")
    front, table, body = card(tmp_path / "hf")
    assert front["pretty_name"] == name
    rendered = MarkdownIt("commonmark", {"html": True}).enable("table").render(body)
    for tag in ("<img", "<b>", "<a ", "<em>", "<strong>"):
        assert tag not in rendered
    assert "run&lt;img src=x onerror=alert(1)&gt;_a_|b" in rendered  # shown as typed
    assert "openai:stub&lt;b&gt;bold&lt;/b&gt;" in rendered and "[click](javascript:alert(1))" in rendered
    assert table["generator model"] == r"openai:stub&lt;b&gt;bold&lt;/b&gt;"
