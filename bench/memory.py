"""Peak memory of `cai run --rounds 1` at two input sizes (default 2,000 and 20,000 prompts).

One StubServer process with latency 0 serves every run. Each size runs as its own `cai` subprocess
into a fresh temporary --out; its peak RSS is ru_maxrss from os.wait4 on that child (so it is that
process's own peak, not the maximum over all children), cross-checked against VmHWM from
/proc/<pid>/status sampled while it runs. Memory that does not grow with the input should give two
peaks within a few percent of each other.

    python bench/memory.py                       # 2000 and 20000 prompts
    python bench/memory.py --sizes 500,5000 --json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, Server, bench_env, cai_run_cmd, parse_json_stdout, write_prompts  # noqa: E402


def _status_kb(pid: int, field: str) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def measure(cmd: list[str], every: float = 0.25) -> dict[str, Any]:
    """Run cmd; return wall time, ru_maxrss (wait4), the last VmHWM seen and RSS samples over time."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=bench_env(), cwd=REPO)
        samples: list[tuple[float, int]] = []
        hwm = [0]
        stop = threading.Event()

        def poll() -> None:
            while not stop.is_set():
                rss, peak = _status_kb(proc.pid, "VmRSS"), _status_kb(proc.pid, "VmHWM")
                if rss is not None:
                    samples.append((time.perf_counter() - t0, rss))
                if peak is not None:
                    hwm[0] = max(hwm[0], peak)
                stop.wait(every)

        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        _, status, ru = os.wait4(proc.pid, 0)
        stop.set()
        poller.join()
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - t0
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode("utf-8", "replace"), err.read().decode("utf-8", "replace")
    if proc.returncode != 0:
        raise SystemExit(f"cai run failed (exit {proc.returncode}):\n{stderr[-3000:]}")
    # RSS at 25/50/75/100 % of the run's samples shows whether memory keeps growing with the input.
    quart = [samples[min(len(samples) - 1, int(q * len(samples)))][1] / 1024 for q in (0.25, 0.5, 0.75, 1.0)] \
        if samples else []
    return {"wall_s": wall, "maxrss_mb": ru.ru_maxrss / 1024, "vmhwm_mb": hwm[0] / 1024,
            "rss_quartiles_mb": quart, "cpu_s": ru.ru_utime + ru.ru_stime,
            "manifest": parse_json_stdout(stdout)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="2000,20000", help="comma-separated prompt counts (default 2000,20000)")
    ap.add_argument("--concurrency", "-c", type=int, default=64, help="records in flight (default 64)")
    ap.add_argument("--reply-words", type=int, default=20, help="words per plain reply (default 20)")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]

    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="cai-bench-mem-") as d, Server(0.0, args.reply_words) as server:
        tmp = Path(d)
        for n in sizes:
            inp = write_prompts(tmp / f"prompts-{n}.jsonl", n)
            before = server.requests()
            r = measure(cai_run_cmd(inp, tmp / f"run-{n}", server.url, args.concurrency))
            r["server_requests"] = server.requests() - before
            r["calls"] = r.pop("manifest").get("this_invocation", {}).get("calls")
            r["n"] = n
            results.append(r)
            if not args.json:
                q = " → ".join(f"{x:.0f}" for x in r["rss_quartiles_mb"])
                print(f"{n:>7} prompts: peak RSS {r['maxrss_mb']:.1f} MB "
                      f"(wait4 ru_maxrss; VmHWM {r['vmhwm_mb']:.1f} MB)"
                      f"  RSS at 25/50/75/100% of the run: {q} MB  {r['wall_s']:.1f} s, "
                      f"{r['server_requests']} server requests", flush=True)
    summary: dict[str, Any] = {"concurrency": args.concurrency, "runs": results}
    if len(results) >= 2:
        summary["ratio_largest_to_smallest"] = results[-1]["maxrss_mb"] / results[0]["maxrss_mb"]
    if args.json:
        print(json.dumps(summary, indent=2))
    elif "ratio_largest_to_smallest" in summary:
        print(f"peak RSS ratio {results[-1]['n']} ÷ {results[0]['n']} prompts: "
              f"{summary['ratio_largest_to_smallest']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
