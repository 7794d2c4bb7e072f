"""Resume costs nothing: run `cai run` over ~200 prompts, then the same command again.

A StubServer subprocess (latency 0) counts the requests it gets (/_stats). The second, identical
invocation should find every record done and make no model call; the figure is printed twice, from
the server's count and from the `--json` summary's `this_invocation.calls`.

    python bench/resume.py
    python bench/resume.py --n 500 --rounds 2 --json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Server, bench_env, cai_run_cmd, parse_json_stdout, run_child, write_prompts  # noqa: E402


def invoke(cmd: list[str], server: Server) -> dict[str, Any]:
    before = server.requests()
    res = run_child(cmd, env=bench_env())
    if res.returncode != 0:
        raise SystemExit(f"cai run failed (exit {res.returncode}):\n{res.stderr[-3000:]}")
    manifest = parse_json_stdout(res.stdout)
    inv = manifest.get("this_invocation", {})
    return {"wall_s": res.wall_s, "cpu_s": res.cpu_s, "server_requests": server.requests() - before,
            "calls": inv.get("calls"), "cached": inv.get("cached"), "done": inv.get("done"),
            "skipped": inv.get("skipped"), "records_done": manifest.get("records", {}).get("done")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200, help="prompts (default 200)")
    ap.add_argument("--rounds", type=int, default=1, help="cai --rounds (default 1)")
    ap.add_argument("--concurrency", "-c", type=int, default=64, help="records in flight (default 64)")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="cai-bench-resume-") as d, Server(0.0, 20) as server:
        tmp = Path(d)
        inp = write_prompts(tmp / "prompts.jsonl", args.n)
        cmd = cai_run_cmd(inp, tmp / "run", server.url, args.concurrency, rounds=args.rounds)
        first = invoke(cmd, server)
        again = invoke(cmd, server)
    summary = {"n": args.n, "rounds": args.rounds, "first": first, "rerun": again}
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    for name, r in (("first run", first), ("re-run", again)):
        print(f"{name:<9}: {r['server_requests']:>5} server requests, this_invocation.calls={r['calls']}, "
              f"cached={r['cached']}, done this time={r['done']}, skipped={r['skipped']}, "
              f"records done in the run={r['records_done']}, {r['wall_s']:.2f} s wall, {r['cpu_s']:.2f} s CPU")
    print(f"model calls made by the re-run: {again['server_requests']} (server /_stats), "
          f"{again['calls']} (--json this_invocation.calls)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
