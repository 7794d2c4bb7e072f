"""docs/architecture.md's worked examples, run as written: each "### Add a ..." section's Python file, its entry
points and its commands are installed into a folder on PYTHONPATH as a package would be, and the commands run in a
fresh folder with the repository's examples/."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from helpers import install_plugin

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "architecture.md"
BLOCK = re.compile(r"```(\w+)\n(.*?)```", re.S)


def sections() -> dict[str, str]:
    """{"provider": text, ...}: the body of every "### Add a KIND" section."""
    parts = re.split(r"^### Add an? (\w+)\s*$", DOC.read_text(encoding="utf-8"), flags=re.M)
    return {parts[i]: parts[i + 1].split("\n## ")[0] for i in range(1, len(parts), 2)}


def example(kind: str) -> tuple[dict[str, str], dict[str, str], list[str]]:
    """(modules {name: source}, entry points {name: target}, commands) of the section on `kind`."""
    modules, entry_points, commands = {}, {}, []
    for lang, body in BLOCK.findall(sections()[kind]):
        if lang == "python":
            first = body.splitlines()[0]
            assert first.startswith("# ") and first.endswith(".py"), f"{kind}: a Python block starts '# NAME.py'"
            modules[first[2:-3]] = body
        elif lang == "toml":
            entry_points.update(re.findall(r'^"([\w.]+)" = "([\w.:]+)"$', body, flags=re.M))
        elif lang == "bash":
            commands += [line for line in body.splitlines() if line.strip() and not line.startswith("#")]
    assert modules and entry_points and commands, f"the {kind} example needs a module, an entry point and a command"
    return modules, entry_points, commands


def run_example(kind: str, tmp_path: Path) -> tuple[Path, list[subprocess.CompletedProcess[str]]]:
    """Install the section's plugin and run its commands in a fresh folder; every command must exit 0."""
    site, work = tmp_path / "site", tmp_path / "work"
    site.mkdir()
    shutil.copytree(REPO / "examples", work / "examples")
    modules, entry_points, commands = example(kind)
    if kind != "provider":  # the examples build on the provider example
        install_plugin(site, "cai_example_provider", *example("provider")[1::-1])
    install_plugin(site, f"cai_example_{kind}", entry_points, modules)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    done = []
    for command in commands:
        proc = subprocess.run(["bash", "-c", command], cwd=work, env=env, capture_output=True, text=True)
        assert proc.returncode == 0, f"{command}\n{proc.stderr}"
        done.append(proc)
    return work, done


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_every_kind_has_a_worked_example() -> None:
    assert set(sections()) == {"provider", "scorer", "labeler", "exporter", "command"}


def test_add_a_provider(tmp_path: Path) -> None:
    work, _ = run_example("provider", tmp_path)
    sft = read_jsonl(work / "runs" / "shout" / "sft.jsonl")
    assert sft and all(row["messages"][-1]["content"].isupper() for row in sft)


def test_add_a_scorer(tmp_path: Path) -> None:
    work, _ = run_example("scorer", tmp_path)
    manifest = json.loads((work / "runs" / "short" / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["settings"]["scoring"]["scorer"] == "brevity"
    pairs = read_jsonl(work / "runs" / "short" / "pairs.jsonl")
    for pair in pairs:
        words = [len(pair[k][-1]["content"].split()) for k in ("chosen", "rejected")]
        assert [pair["reward_chosen"], pair["reward_rejected"]] == [-w for w in words]


def test_add_a_labeler(tmp_path: Path) -> None:
    work, _ = run_example("labeler", tmp_path)
    pairs = [p for p in read_jsonl(work / "runs" / "labeled" / "pairs.jsonl") if p["source"] == "ai_label"]
    assert pairs
    for pair in pairs:
        assert len(pair["chosen"][-1]["content"]) < len(pair["rejected"][-1]["content"])


def test_add_an_exporter(tmp_path: Path) -> None:
    work, _ = run_example("exporter", tmp_path)
    with open(work / "pairs.csv", newline="", encoding="utf-8") as f:
        header, *rows = list(csv.reader(f))
    pairs = read_jsonl(work / "runs" / "shout" / "pairs.jsonl")
    assert header == ["prompt", "chosen", "rejected"] and len(rows) == len(pairs) > 0
    assert [r[1] for r in rows] == [p["chosen"][-1]["content"] for p in pairs]


def test_add_a_command(tmp_path: Path) -> None:
    work, done = run_example("command", tmp_path)
    pairs = len(read_jsonl(work / "runs" / "shout" / "pairs.jsonl"))
    assert done[-1].stdout.strip() == f"{pairs} pairs"


@pytest.mark.parametrize("kind", ["provider", "scorer", "labeler", "exporter", "command"])
def test_the_example_plugins_are_ruff_clean(kind: str, tmp_path: Path) -> None:
    modules, _, _ = example(kind)
    for name, source in modules.items():
        (tmp_path / f"{name}.py").write_text(source, encoding="utf-8")
    ruff = shutil.which("ruff") or str(Path(sys.executable).parent / "ruff")
    proc = subprocess.run([ruff, "check", "--no-cache", "--config", str(REPO / "pyproject.toml"), str(tmp_path)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout
