"""One vocabulary across commands: `--out` is a folder, `-o/--output` a file; `--model` sets every role and an
option named after a role (`--judge`, `--grader`) sets that one; old spellings still work, hidden, with one
deprecation line; `cai batch submit` refuses the embedded model first; `cai run --help` groups its options in
panels; no help text splits an option name across lines at 80 columns."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import typer.main

import cai
from cai import batch
from cai.cli import app
from cai.errors import InputError
from cai.options import PANELS, declared
from helpers import cai as cai_cli

BOGUS = "error: unknown model provider 'bogus' in 'bogus:thing' (known: anthropic, local, openai, transformers)"


def _rows(tmp_path: Path, name: str, row: dict[str, Any]) -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(row) + "\n")
    return path


def _renamed_model_commands(tmp_path: Path) -> dict[str, list[Any]]:
    """{command: its arguments up to the model option}: each reaches the model factory with the spec it is given."""
    prompt = {"id": "a", "prompt": "Hi?"}
    return {
        "judge-eval": ["judge-eval", _rows(tmp_path, "pairs.jsonl", {**prompt, "chosen": "Hello.", "rejected": "No."})],
        "label": ["label", _rows(tmp_path, "rows.jsonl", {**prompt, "responses": ["Hello.", "Hi there."]})],
        "rbr grade": ["rbr", "grade", _rows(tmp_path, "graded.jsonl", {**prompt, "response": "Hello.",
                                                                         "response_type": "Hard Refuse"})],
        "rbr eval": ["rbr", "eval", _rows(tmp_path, "gold.jsonl", {
            **prompt, "completion": "Hello.", "response_type": "Hard Refuse",
            "propositions": {"inability_to_comply": False}})],
        "rbr refusal-eval": ["rbr", "refusal-eval", _rows(tmp_path, "lab.jsonl", {
            **prompt, "completion": "Hello.", "label": "full_compliance"}), "--method", "grader"],
    }


ROLE = {"judge-eval": "--judge", "label": "--judge", "rbr grade": "--grader", "rbr eval": "--grader",
        "rbr refusal-eval": "--grader"}


def _help(*path: str) -> str:
    return cai_cli(*path, "--help").stdout


def _named(flag: str, text: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text) is not None


@pytest.mark.parametrize("command", sorted(ROLE))
def test_the_model_of_a_one_role_command_is_named_after_its_role(tmp_path, command):
    args = [*_renamed_model_commands(tmp_path)[command], "--out", tmp_path / "store"]
    new = cai_cli(*args, ROLE[command], "bogus:thing")
    assert new.exit_code == 2 and new.stderr == f"{BOGUS}\n"
    old = cai_cli(*args, "--model", "bogus:thing")
    assert old.exit_code == 2
    assert old.stderr == f"cai: --model SPEC is deprecated for cai {command}; use {ROLE[command]}\n{BOGUS}\n"
    both = cai_cli(*args, "--model", "bogus:thing", ROLE[command], "openai:other")
    assert both.exit_code == 2 and f"error: give {ROLE[command]} once" in both.stderr
    text = _help(*command.split())
    assert _named(ROLE[command], text) and not _named("--model", text)


def test_report_writes_its_file_with_output_and_still_with_out(tmp_path, stub_server, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    run = tmp_path / "run"
    cai.run(["Hi?"], out=run, model="openai:stub", base_url=stub_server.url, rounds=1, max_tokens=16)
    for flag in ("-o", "--output"):
        res = cai_cli("report", run, flag, tmp_path / f"{flag}.html")
        assert res.exit_code == 0 and res.stderr == f"wrote {tmp_path / f'{flag}.html'}\n"
        assert "<html" in (tmp_path / f"{flag}.html").read_text()
    res = cai_cli("report", run, "--out", tmp_path / "old.html")
    assert res.exit_code == 0 and (tmp_path / "old.html").is_file()
    assert res.stderr == (f"cai: --out FILE is deprecated for cai report; use -o/--output\n"
                          f"wrote {tmp_path / 'old.html'}\n")
    res = cai_cli("report", run, "--out", tmp_path / "a.html", "-o", tmp_path / "b.html")
    assert res.exit_code == 2 and res.stderr.endswith("error: give -o/--output once (--out is its old spelling)\n")
    text = _help("report")
    assert "-o, --output " in text and not _named("--out", text)


def test_batch_submit_refuses_the_embedded_model_before_anything(tmp_path):
    missing = tmp_path / "not-written-yet.jsonl"  # never read: the model is refused first
    res = cai_cli("batch", "submit", missing, "--out", tmp_path / "job")
    assert res.exit_code == 2 and res.stderr == (
        "error: a batch job needs --model openai:NAME or anthropic:NAME: the default model, local (the embedded "
        "one), has no batch API (use cai run for it)\n")
    res = cai_cli("batch", "submit", missing, "--out", tmp_path / "job", "--model", "local:my.gguf")
    assert res.exit_code == 2 and res.stderr == (
        "error: a batch job needs openai: or anthropic: models; local:my.gguf (the generator) has no batch API "
        "(use cai run for it)\n")
    res = cai_cli("batch", "submit", missing, "--out", tmp_path / "job", "--model", "openai:x", "--candidates", "2",
                  "--judge", "local")
    assert res.exit_code == 2 and "local (the judge) has no batch API" in res.stderr
    with pytest.raises(InputError, match="has no batch API"):
        batch.submit(["Hi?"], out=tmp_path / "job", model="openai:x", critic="local")
    assert not (tmp_path / "job").exists()
    assert "[default: local]" not in _help("batch", "submit")


def _sections(text: str) -> dict[str, str]:
    """{title: body} of a help text's sections (a line "Title:" at column 0 starts one)."""
    out: dict[str, str] = {}
    title = None
    for line in text.splitlines():
        if m := re.fullmatch(r"([A-Z][\w ()-]*):", line):
            title = m.group(1)
            out[title] = ""
        elif title is not None:
            out[title] += line + "\n"
    return out


@pytest.mark.parametrize("command", [("run",), ("batch", "submit")])
def test_run_options_are_listed_in_panels(command):
    sections = _sections(_help(*command))
    assert list(sections) == ["Arguments", *PANELS, "Options"]
    params = {p.name: p for p in _command(*command).params}
    for name, (_, opt) in declared().items():
        if name not in params:
            continue  # not an option of cai batch submit
        flag = params[name].opts[0]
        holders = [t for t, body in sections.items() if re.search(rf"^  {re.escape(flag)}[ ,/]", body, re.M)]
        assert holders == [opt.help_panel], (name, holders)
        assert params[name].rich_help_panel == opt.help_panel in PANELS
    assert re.search(r"^  --json ", sections["Options"], re.M)


def test_the_two_pair_thresholds_sit_side_by_side():
    export = _sections(_help("run"))["Export"]
    flags = re.findall(r"^  (--[\w-]+)", export, re.M)
    assert flags[-2:] == ["--min-reward-margin", "--min-margin"]
    assert "Labeled pairs: --min-margin" in " ".join(export.split())
    assert "Revision pairs: --min-reward-margin" in " ".join(export.split())


def _command(*path: str) -> Any:
    cmd = typer.main.get_command(app)
    for name in path:
        cmd = cmd.commands[name]
    return cmd


def _all_commands(cmd: Any = None, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    cmd = cmd or typer.main.get_command(app)
    out = [path]
    for name, sub in getattr(cmd, "commands", {}).items():
        out += _all_commands(sub, (*path, name))
    return out


def test_no_help_splits_an_option_name_or_an_example_at_80_columns():
    flags = {"--help"}
    for path in _all_commands():
        for p in _command(*path).params:
            flags |= {o for o in (*p.opts, *p.secondary_opts) if o.startswith("--")}
    for path in _all_commands():
        cmd = _command(*path)
        # an 80-column terminal: click wraps help at 78 (typer's CliRunner forces 80, hence no --help run here)
        text = cmd.get_help(typer.Context(cmd, info_name=" ".join(("cai", *path)), terminal_width=78))
        for line in text.splitlines():
            assert set(re.findall(r"(?<![\w-])--[a-z][\w-]*", line)) <= flags, (path, line)
            if line.lstrip().startswith("cai ") or "Example: cai " in line:
                assert len(line) <= 80, (path, line)
