"""The command line surface: --version, --help with an example on every command, constitution commands."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from helpers import cai

COMMANDS = [["run"], ["export"], ["status"], ["constitution", "list"], ["constitution", "show"]]


def test_version_and_module_entry_point():
    from cai import __version__

    assert cai("--version").stdout.strip() == f"cai {__version__}"
    proc = subprocess.run([sys.executable, "-m", "cai", "--version"], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == f"cai {__version__}"


@pytest.mark.parametrize("cmd", COMMANDS, ids=lambda c: " ".join(c))
def test_every_command_has_help_with_example(cmd):
    res = cai(*cmd, "--help")
    assert res.exit_code == 0
    assert re.search(r"Example:\s+cai ", res.stdout)  # on its own line where it would wrap


def test_constitution_list_and_show():
    rows = json.loads(cai("constitution", "list", "--json").stdout)
    by_name = {r["name"]: r for r in rows}
    assert by_name["default"]["principles"] >= 16 and "model-spec" in by_name
    shown = cai("constitution", "show", "model-spec")
    assert shown.exit_code == 0 and "ask-clarifying-questions" in shown.stdout
    data = json.loads(cai("constitution", "show", "default", "--json").stdout)
    assert len(data["principles"]) >= 16 and len(data["sha256"]) == 64
    missing = cai("constitution", "show", "nope")
    assert missing.exit_code == 2 and missing.stderr.startswith("error: unknown constitution 'nope'")


def test_status_and_export_refuse_non_runs(tmp_path):
    for cmd in ("status", "export"):
        res = cai(cmd, tmp_path)
        assert res.exit_code == 2 and "not a cai run" in res.stderr


def test_bad_option_values_exit_2(tmp_path):
    inp = tmp_path / "in.jsonl"
    inp.write_text('{"prompt": "hi"}\n')
    assert cai("run", inp, "--format", "xml").exit_code == 2
    assert cai("run", inp, "--rounds", "-1").exit_code == 2
    res = cai("run", inp, "--model", "bogus:thing", "--out", tmp_path / "r")
    assert res.exit_code == 2 and "unknown model provider 'bogus'" in res.stderr
