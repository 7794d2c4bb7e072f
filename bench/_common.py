"""Shared plumbing for the benchmarks: a StubServer in its own process, child processes measured with
os.wait4 (CPU time and peak RSS of exactly that child), and prompt files.

Not a benchmark itself; the scripts next to it import it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SERVER_SCRIPT = REPO / "tests" / "servers.py"
EXAMPLES = REPO / "examples" / "prompts.jsonl"


def cai_command() -> list[str]:
    """`cai` as installed next to this interpreter, else `python -m cai` (same code either way)."""
    exe = Path(sys.executable).with_name("cai")
    if exe.is_file():
        return [str(exe)]
    found = shutil.which("cai")
    return [found] if found else [sys.executable, "-m", "cai"]


class Server:
    """`python tests/servers.py` as a separate process; `url` is the OpenAI base URL."""

    def __init__(self, latency: float = 0.0, reply_words: int = 20) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(SERVER_SCRIPT), "--latency", str(latency), "--reply-words", str(reply_words),
             "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if not line.startswith("PORT "):
            self.proc.kill()
            raise RuntimeError(f"stub server did not start (said {line!r})")
        self.port = int(line.split()[1])
        self.base = f"http://127.0.0.1:{self.port}"
        self.url = f"{self.base}/v1"

    def requests(self) -> int:
        with urllib.request.urlopen(f"{self.base}/_stats", timeout=10) as r:
            return int(json.loads(r.read())["requests"])

    def cpu_s(self) -> float:
        """User + system CPU seconds the server process has used so far (from /proc; 0 elsewhere)."""
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


@dataclass
class ChildResult:
    returncode: int
    wall_s: float
    cpu_s: float  # user + system of the child (and any children it waited for)
    maxrss_mb: float  # peak resident set of that child
    stdout: str
    stderr: str


def run_child(cmd: list[str], env: dict[str, str] | None = None, timeout: float | None = None) -> ChildResult:
    """Run `cmd` to completion; CPU and peak RSS come from os.wait4 on its pid, so they are its own."""
    import tempfile

    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, cwd=REPO)
        deadline = None if timeout is None else t0 + timeout
        while True:
            pid, status, ru = os.wait4(proc.pid, os.WNOHANG if deadline else 0)
            if pid:
                break
            if deadline and time.perf_counter() > deadline:
                proc.kill()
                pid, status, ru = os.wait4(proc.pid, 0)
                break
            time.sleep(0.05)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped by wait4: keep Popen from waiting again
        out.seek(0)
        err.seek(0)
        return ChildResult(proc.returncode, wall, ru.ru_utime + ru.ru_stime, ru.ru_maxrss / 1024.0,
                           out.read().decode("utf-8", "replace"), err.read().decode("utf-8", "replace"))


def base_prompts() -> list[str]:
    """The user prompts of examples/prompts.jsonl (the last user turn of `messages` rows)."""
    out = []
    for line in EXAMPLES.read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            out.append(row["prompt"] if "prompt" in row else row["messages"][-1]["content"])
    return out


def write_prompts(path: Path, n: int) -> Path:
    """n distinct prompts (the examples, each numbered) as JSONL with ids p0..p{n-1}."""
    base = base_prompts()
    with path.open("w", encoding="utf-8") as fh:
        for i in range(n):
            fh.write(json.dumps({"id": f"p{i}", "prompt": f"{base[i % len(base)]} (#{i})"}) + "\n")
    return path


def cai_run_cmd(inp: Path, out: Path, url: str, concurrency: int, rounds: int = 1,
                extra: list[str] | None = None) -> list[str]:
    return [*cai_command(), "run", str(inp), "--out", str(out), "--rounds", str(rounds),
            "--concurrency", str(concurrency), "--model", "openai:bench", "--base-url", url,
            "--quiet", "--json", *(extra or [])]


def bench_env() -> dict[str, str]:
    """The environment for children; cai sends no real key to the loopback server (it uses a dummy)."""
    env = dict(os.environ)
    env.pop("OPENAI_API_KEY", None)
    return env


def parse_json_stdout(text: str) -> dict[str, Any]:
    try:
        return json.loads(text)
    except ValueError:
        start = text.find("{")
        return json.loads(text[start:]) if start >= 0 else {}


def refusal_figures_line(name: str, binary: dict[str, Any], three_way: dict[str, Any]) -> str:
    """One line of refusal-classifier figures (`cai.rbr.refusal_eval.evaluate`'s binary and three_way parts)."""
    b, t = binary, three_way
    return (f"{name}: n {b['n']}  binary accuracy {b['accuracy']:.3f} precision {b['precision'] or 0:.3f} "
            f"recall {b['recall'] or 0:.3f} partial recall {b['partial_recall'] or 0:.3f} | three-way "
            f"accuracy {t['accuracy']:.3f} macro-F1 {t['macro_f1']:.3f}")


def demo_arguments(doc: str) -> argparse.Namespace:
    """The options of a bench over the README demo run: `--demo RUN` (a finished one; default: run it now) and
    `--json`; `doc` is the script's docstring, whose first line describes it."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--demo", type=Path, help="a finished run of the README demo (default: run it now)")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    return ap.parse_args()
