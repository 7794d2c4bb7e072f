"""Shared test helpers: run the CLI in-process and read a run's exports."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from cai.cli import app
from cai.store import Store

REPO = Path(__file__).resolve().parents[1]
# The development data sets beside this checkout (../shared/data); a fresh clone has none. CAI_TEST_SHARED_DATA
# points elsewhere (a missing folder shows what a fresh clone sees).
SHARED = Path(os.environ.get("CAI_TEST_SHARED_DATA") or REPO.parent / "shared" / "data")


def shared_file(name: str) -> Path:
    """The file `name` of the shared development data, or the calling test skipped with the reason."""
    path = SHARED / name
    if not path.is_file():
        pytest.skip(f"no {name} at {path} (the shared development data is not beside this checkout)")
    return path


def cai(*args: str, env: dict[str, str] | None = None) -> Any:
    """Invoke `cai ARGS` in this process; returns typer's Result (exit_code, stdout, stderr)."""
    return CliRunner().invoke(app, [str(a) for a in args], env=env, catch_exceptions=False, prog_name="cai")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def write_prompts(path: Path, prompts: list[str]) -> Path:
    path.write_text("".join(json.dumps({"id": f"p{i}", "prompt": p}) + "\n" for i, p in enumerate(prompts)))
    return path


def check_trl_shapes(run: Path) -> dict[str, list[dict[str, Any]]]:
    """Every export exists and has the documented TRL conversational shape."""
    out = {name: read_jsonl(run / f"{name}.jsonl") for name in ("sft", "pairs", "critiques")}
    for row in out["sft"]:
        assert set(row) == {"id", "messages", "quality"} and isinstance(row["quality"], list)
        assert row["messages"][-1]["role"] == "assistant"
        assert all(set(m) == {"role", "content"} for m in row["messages"])
    for row in out["pairs"]:
        assert set(row) == {"id", "prompt", "chosen", "rejected", "metadata", "quality", "source", "review"}
        assert row["source"] in ("revision", "human", "human_edit") and (row["review"] is None) == (
            row["source"] == "revision")
        assert row["prompt"][-1]["role"] == "user"
        assert [m["role"] for m in row["chosen"]] == ["assistant"] == [m["role"] for m in row["rejected"]]
        assert row["chosen"][0]["content"].strip() and row["chosen"][0]["content"] != row["rejected"][0]["content"]
    for row in out["critiques"]:
        assert {"id", "round", "principle", "critique", "verdict", "parsed", "before", "after"} <= set(row)
    manifest = json.loads((run / "manifest.json").read_text())
    for key in ("cai_version", "models", "settings", "seed", "constitution", "input", "records", "tokens",
                "wall_seconds"):
        assert key in manifest
    return out


def run_with_expected(run: Path, recs: list[tuple[str, str, str, str]]) -> None:
    """A run store at `run` with done records (id, expected comply|refuse, draft, final), for refusal metrics."""
    run.mkdir()
    store = Store(run)

    async def fill() -> None:
        for i, (rid, exp, draft, final) in enumerate(recs):
            store.add_record(i, rid, [{"role": "user", "content": rid}], {"expected": exp})
            store.add_step(rid, 0, "draft", 0, {"response": draft})
            store.add_step(rid, 2, "revise", 1, {"response": final, "before": draft}, status="done")

    asyncio.run(fill())
    store.close()


def install_plugin(site: Path, dist: str, entry_points: dict[str, str], modules: dict[str, str]) -> None:
    """A distribution `dist` in the folder `site` (put on sys.path): its modules and a dist-info folder whose
    entry_points.txt registers `entry_points` in the `cai.plugins` group, as `pip install` would write it."""
    for name, source in modules.items():
        (site / f"{name}.py").write_text(source, encoding="utf-8")
    info = site / f"{dist}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n", encoding="utf-8")
    lines = "".join(f"{name} = {target}\n" for name, target in entry_points.items())
    (info / "entry_points.txt").write_text(f"[cai.plugins]\n{lines}", encoding="utf-8")
