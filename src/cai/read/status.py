"""`cai status` as data: a run's counts, tokens, errors, liveness and commands to resume. Never writes."""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path
from typing import Any

from cai.read.cmdline import resume_command, retry_command
from cai.read.export import budget_info, run_settings
from cai.store import Store
from cai.store.lock import running_pid


def _in_cwd(command: str, cwd: str | None) -> str:
    """Prefix `cd DIR &&` when the command was typed in another folder (its paths are relative to it)."""
    if cwd and os.path.abspath(cwd) != os.path.abspath(os.getcwd()):
        return f"cd {shlex.quote(cwd)} && {command}"
    return command


def read_manifest(run_dir: Path) -> dict[str, Any]:
    """manifest.json as written by the last export ({} before the first)."""
    try:
        return json.loads((run_dir / "manifest.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}


def _exported(run_dir: Path) -> dict[str, Any]:
    """The export counts, the quality gate's counts and what people's review decisions did, from manifest.json as
    the last export wrote them (None each before the first export, or if the manifest cannot be read)."""
    try:
        data = read_manifest(run_dir)
    except (OSError, ValueError):
        data = {}
    data = data if isinstance(data, dict) else {}
    return {"exports": data.get("exports"), "quality": data.get("quality"), "reviews": data.get("reviews")}


def run_status(run_dir: Path) -> dict[str, Any]:
    """Counts that add up (done + in progress + failed + not started = input records), open and resolved
    errors, the pid of a live writer, the last export's counts, quality gate counts and what people's decisions
    did (`exports`, `quality`, `reviews`), the budget now (`budget`: limit, spent, reserved by calls in flight;
    None without `--max-cost`), and the last invocation's resume and retry commands."""
    store = Store.open_run(run_dir, readonly=True)
    try:
        counts = store.counts()
        total = (store.get_meta("input", {}) or {}).get("records")
        invocations = store.invocations()
        done, failed, pending = counts.get("done", 0), counts.get("failed", 0), counts.get("pending", 0)
        known = done + failed + pending
        total = max(total or 0, known)
        info: dict[str, Any] = {
            "run": str(run_dir), "running_pid": running_pid(run_dir),
            "records": {"input": total, "done": done, "in_progress": pending, "failed": failed,
                        "not_started": total - known},
            "tokens": store.token_totals(), "errors_open": store.error_count(open_only=True),
            "errors": store.errors(last=20), "resume": None, "retry_failed": None,
            "budget": budget_info(store, run_settings(store))}
    finally:
        store.close()
    info.update(_exported(run_dir))
    last = next((i for i in reversed(invocations) if i["command"].get("argv")), None)
    if last is not None:
        argv, cwd = last["command"]["argv"], last["command"].get("cwd")
        info["resume"] = _in_cwd(resume_command(argv), cwd)
        info["retry_failed"] = _in_cwd(retry_command(argv), cwd)
    return info
