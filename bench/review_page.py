"""The review page on a large run: time to open it and time to save a decision.

Builds a run of `--n` 5,000 prompts with `cai run --rounds 1` against one StubServer process (latency 0), as
bench/memory.py does (about a minute on 2 cores; `--run DIR` keeps it there and reuses it, a finished run
resumes with no model call). Then starts `cai review serve RUN --no-browser` as a child process and measures:

- open: from spawning the server to its URL on stdout (it is listening), and to the first record's JSON served
  (`/api/queue`, then `/api/record/{start}`), which is what a browser waits for;
- save: `--saves` 50 decisions, one per record, each a `POST /api/decision` timed from request to answer
  (written to reviews.sqlite with synchronous=FULL before the answer): median and 90th percentile.

    python bench/review_page.py                  # 5,000 prompts in a temporary folder
    python bench/review_page.py --run runs/big   # keep (or reuse) the run
    python bench/review_page.py --json
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, Server, bench_env, cai_command, cai_run_cmd, run_child, write_prompts  # noqa: E402


def build(run: Path, n: int, concurrency: int) -> float:
    """`cai run` of `n` prompts into `run` (resumed if it is there); its wall seconds."""
    with Server(0.0, 20) as server:
        inp = write_prompts(run.parent / f"{run.name}-prompts.jsonl", n)
        res = run_child(cai_run_cmd(inp, run, server.url, concurrency), env=bench_env())
    if res.returncode != 0:
        raise SystemExit(f"cai run failed (exit {res.returncode}):\n{res.stderr[-3000:]}")
    return res.wall_s


class Client:
    """Requests to the review server at `url` (the printed one, with its token)."""

    def __init__(self, url: str) -> None:
        self.base, self.token = url.split("/?")[0], url.split("token=")[1]

    def call(self, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, headers={"X-CAI-Token": self.token,
                                                                         "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=600) as r:
            return json.loads(r.read())


def measure(run: Path, saves: int) -> dict[str, Any]:
    """Open the page on `run` and save `saves` decisions (see the module docstring)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([*cai_command(), "review", "serve", str(run), "--no-browser", "--reviewer", "bench"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env=bench_env())
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        if not url.startswith("http"):
            raise SystemExit(f"cai review serve did not start:\n{proc.stderr.read() if proc.stderr else ''}")
        listening = time.perf_counter() - t0
        client = Client(url)
        queue = client.call("/api/queue")
        first = client.call(f"/api/record/{queue['start']}")
        opened = time.perf_counter() - t0
        times, records = [], []
        for n in range(queue["start"], min(queue["total"], queue["start"] + saves)):
            rec = first if n == queue["start"] else client.call(f"/api/record/{n}")
            t = rec["targets"][0]
            body = {"id": rec["id"], "item": t["item"], "round": t["round"], "pair": t["pair"],
                    "decision": "agree" if t["item"] == "critique" else "chosen"}
            s = time.perf_counter()
            client.call("/api/decision", {k: v for k, v in body.items() if v is not None})
            times.append(time.perf_counter() - s)
            s = time.perf_counter()
            client.call(f"/api/record/{min(n + 1, queue['total'] - 1)}")
            records.append(time.perf_counter() - s)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=600)
    return {"queue": queue["total"], "listening_s": listening, "first_record_s": opened,
            "save_median_ms": statistics.median(times) * 1000,
            "save_p90_ms": statistics.quantiles(times, n=10)[-1] * 1000 if len(times) > 1 else times[0] * 1000,
            "record_median_ms": statistics.median(records) * 1000, "saves": len(times)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=5000, help="prompts in the run (default 5000)")
    ap.add_argument("--run", type=Path, help="the run folder, kept and reused (default: a temporary one)")
    ap.add_argument("--saves", type=int, default=50, help="decisions to save (default 50)")
    ap.add_argument("--concurrency", "-c", type=int, default=64, help="records in flight while building")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="cai-bench-review-") as d:
        run = args.run or Path(d) / "run"
        run.parent.mkdir(parents=True, exist_ok=True)
        built = build(run, args.n, args.concurrency)
        r = {"n": args.n, "build_s": built, **measure(run, args.saves)}
    if args.json:
        print(json.dumps(r, indent=2))
    else:
        print(f"{r['n']} prompts (built in {r['build_s']:.1f} s), {r['queue']} records in the queue")
        print(f"open: URL printed (listening) after {r['listening_s']:.2f} s, first record's JSON served after "
              f"{r['first_record_s']:.2f} s (from spawning `cai review serve`)")
        print(f"save: median {r['save_median_ms']:.1f} ms, p90 {r['save_p90_ms']:.1f} ms over {r['saves']} "
              f"decisions; next record's JSON: median {r['record_median_ms']:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
