"""How far `cai estimate` is from what a run then counts: for the README demo (the embedded model, whose tokens
the estimate counts with the GGUF's own tokenizer) and for a loopback run (the stub server, which counts words;
the estimate counts characters / 4 there, so only the calls and the ratios' direction mean much).

    python bench/estimate.py                       # estimates and runs the README demo, then a loopback run
    python bench/estimate.py --demo runs/demo      # reads a finished demo run instead of running it
    python bench/estimate.py --json

Per role and in total: calls estimated ÷ made, input tokens estimated ÷ counted (the estimate quotes replies not
written yet as max_tokens worth of text, so it is an upper bound), output tokens max ÷ counted. The estimate of a
finished run is taken with --restart (as if it were new), so it counts every record.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import EXAMPLES, REPO, Server, cai_command, demo_arguments, write_prompts  # noqa: E402

DEMO = [str(EXAMPLES), "--limit", "6", "--max-tokens", "64"]  # the README's first command, less `run` and --out
LOOPBACK_PROMPTS = 60


def cai_out(args: list[str]) -> str:
    done = subprocess.run([*cai_command(), *args], cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"cai {' '.join(args)} exited {done.returncode}: {done.stderr.strip()[-500:]}")
    return done.stdout


def counted(run_dir: Path) -> dict[str, dict[str, int]]:
    """Per role: the calls the run made and the tokens the model counted (paid and shared calls)."""
    from cai.store import Store

    store = Store.open_run(run_dir, readonly=True)
    try:
        out: dict[str, dict[str, int]] = {}
        for shared in (False, True):
            for role, t in store.token_totals(shared=shared).items():
                acc = out.setdefault(role, {"calls": 0, "tokens_in": 0, "tokens_out": 0})
                for k in acc:
                    acc[k] += t[k]
        return out
    finally:
        store.close()


def compare(args: list[str], run_dir: Path, run_now: bool) -> dict[str, Any]:
    """The estimate of `cai run ARGS --out RUN_DIR` against what the run counted (running it first if asked)."""
    est = json.loads(cai_out(["estimate", *args, "--out", str(run_dir), "--restart", "--json"]))
    if run_now:
        cai_out(["run", *args, "--out", str(run_dir), "--quiet"])
    actual = counted(run_dir)
    rows = {role: (f["calls"], f["tokens_in"], f["tokens_out_max"]) for role, f in est["roles"].items()}
    rows["total"] = (est["total"]["calls"], est["total"]["tokens_in"], est["total"]["tokens_out_max"])
    made = {role: (a["calls"], a["tokens_in"], a["tokens_out"]) for role, a in actual.items()}
    made["total"] = tuple(sum(v[i] for v in made.values()) for i in range(3))  # type: ignore[assignment]
    out = {}
    for role in rows.keys() | made.keys():
        e, a = rows.get(role, (0, 0, 0)), made.get(role, (0, 0, 0))
        out[role] = {"estimated": dict(zip(("calls", "tokens_in", "tokens_out_max"), e)),
                     "counted": dict(zip(("calls", "tokens_in", "tokens_out"), a)),
                     "ratio": {k: (x / y if y else None)
                               for k, x, y in zip(("calls", "tokens_in", "tokens_out"), e, a)}}
    return {"token_count": sorted({f["token_count"] for f in est["roles"].values()}), "roles": out}


def show(name: str, fig: dict[str, Any]) -> None:
    print(f"{name}: input tokens {', '.join(fig['token_count'])}")
    print(f"  {'role':<10} {'calls est/made':>15} {'in est/counted':>22} {'out max/counted':>22}")
    order = ["generator", "critic", "reviser", "grader", "judge", "total"]
    for role in sorted(fig["roles"], key=lambda r: order.index(r) if r in order else 5):
        r = fig["roles"][role]
        e, a, q = r["estimated"], r["counted"], r["ratio"]

        def cell(x: int, y: int, ratio: float | None) -> str:
            return f"{x}/{y} " + ("(-)" if ratio is None else f"({ratio:.2f})")

        print(f"  {role:<10} {cell(e['calls'], a['calls'], q['calls']):>15} "
              f"{cell(e['tokens_in'], a['tokens_in'], q['tokens_in']):>22} "
              f"{cell(e['tokens_out_max'], a['tokens_out'], q['tokens_out']):>22}")


def main() -> None:
    a = demo_arguments(__doc__)
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        demo = compare(DEMO, a.demo or tmp / "demo", run_now=a.demo is None)
        with Server(reply_words=20) as server:
            inp = write_prompts(tmp / "loopback.jsonl", LOOPBACK_PROMPTS)
            loop_args = [str(inp), "--model", "openai:stub", "--base-url", server.url, "--max-tokens", "64"]
            loopback = compare(loop_args, tmp / "loopback", run_now=True)
    if a.json:
        print(json.dumps({"demo": demo, "loopback": loopback}, indent=2))
        return
    show("README demo (embedded model)", demo)
    show(f"loopback ({LOOPBACK_PROMPTS} prompts, stub server: tokens are words)", loopback)


if __name__ == "__main__":
    main()
