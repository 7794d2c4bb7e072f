"""The embedded `local` provider: the single-sequence path (`--local-slots 1`) against the batched engine.

Every phase uses the shipped GGUF (cai.providers.local.default_model_path()) and cai's own thread count
(os.cpu_count()). Three phases (`--phases`, default all), each printed as a ratio new ÷ old:

  tokens  the same `--prompts` 8 prompts, `--max-tokens` 64, temperature 0, seed 0, through
          get_model("local").complete(...) in this process: one at a time with 1 slot, all at once with
          `--slots` N. Also a bare llama_cpp.Llama.create_chat_completion loop on the same prompts (the 1-slot
          path's reference). tokens/s = completion tokens ÷ wall time, after one warm-up call each.
  demo    the README demo, `cai run examples/prompts.jsonl --limit 6 --max-tokens 64` into a fresh folder, as a
          child process with CAI_LOCAL_SLOTS=1 and then =N: wall time, tokens from manifest.json, and peak RSS
          of the child (os.wait4).
  rbr     `cai rbr eval ../shared/data/rbr_gold_dev.jsonl --grader local --limit K` (`--rbr-limit` 4), each
          as a child with CAI_LOCAL_SLOTS=1 and =N: seconds per graded response, peak RSS.

    python bench/embedded.py                          # about 4 minutes on 2 cores
    python bench/embedded.py --phases tokens --slots 4 --json

The children run first (demo, rbr, then tokens): on Linux a child's wait4 peak RSS includes its parent's memory at
fork, and the tokens phase loads models into this process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import EXAMPLES, REPO, base_prompts, cai_command, run_child  # noqa: E402

GOLD = REPO.parent / "shared" / "data" / "rbr_gold_dev.jsonl"


def tokens_phase(args: argparse.Namespace) -> dict[str, Any]:
    """Generated tokens/s of the same prompts at 1 slot (one at a time), N slots (all at once) and bare."""
    from llama_cpp import Llama

    from cai.config import GenConfig, Request
    from cai.providers import get_model
    from cai.providers.local import N_CTX, default_model_path
    from cai.providers.local_slots import set_local_slots

    cfg = GenConfig(max_tokens=args.max_tokens, temperature=0.0, seed=0)
    reqs = [Request(messages=({"role": "user", "content": p},), config=cfg) for p in base_prompts()[: args.prompts]]
    bare = Llama(model_path=str(default_model_path()), n_ctx=N_CTX, n_threads=os.cpu_count() or 1, verbose=False)

    async def run(slots: int) -> dict[str, Any]:
        set_local_slots(slots)
        model = get_model("local")
        await model.complete(reqs[0].model_copy(update={"config": cfg.model_copy(update={"max_tokens": 4})}))
        t = time.perf_counter()
        if slots == 1:
            outs = [await model.complete(r) for r in reqs]
        else:
            outs = list(await asyncio.gather(*(model.complete(r) for r in reqs)))
        secs = time.perf_counter() - t
        n = sum(o.tokens_out for o in outs)
        return {"tokens": n, "seconds": secs, "tokens_per_s": n / secs, "texts": [o.text for o in outs]}

    one = asyncio.run(run(1))
    many = asyncio.run(run(args.slots))
    set_local_slots(None)
    bare.create_chat_completion(messages=[dict(reqs[0].messages[0])], max_tokens=4, temperature=0.0, seed=0)
    t = time.perf_counter()
    n = sum(int(bare.create_chat_completion(messages=[dict(r.messages[0])], max_tokens=args.max_tokens,
                                            temperature=0.0, seed=0)["usage"]["completion_tokens"]) for r in reqs)
    bare_s = time.perf_counter() - t
    same = sum(a == b for a, b in zip(one.pop("texts"), many.pop("texts")))
    return {"one_slot": one, "n_slots": many, "bare": {"tokens": n, "seconds": bare_s, "tokens_per_s": n / bare_s},
            "same_texts": same, "prompts": len(reqs),
            "ratio_n_over_1": many["tokens_per_s"] / one["tokens_per_s"],
            "ratio_1_over_bare": one["tokens_per_s"] / (n / bare_s)}


def _child(cmd: list[str], slots: int) -> dict[str, Any]:
    """Run `cmd` as a child with CAI_LOCAL_SLOTS=`slots`: its wall time, CPU time and peak RSS."""
    env = dict(os.environ, CAI_LOCAL_SLOTS=str(slots))
    res = run_child(cmd, env=env)
    if res.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} exited {res.returncode}: {res.stderr[-2000:]}")
    return {"wall_s": res.wall_s, "cpu_s": res.cpu_s, "peak_rss_mb": res.maxrss_mb}


def demo_phase(args: argparse.Namespace) -> dict[str, Any]:
    """The README demo run at 1 slot and at N slots."""
    out: dict[str, Any] = {}
    for slots in (1, args.slots):
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [*cai_command(), "run", str(EXAMPLES), "--out", str(Path(tmp) / "demo"), "--limit", "6",
                   "--max-tokens", "64", "--quiet"]
            fig = _child(cmd, slots)
            manifest = json.loads((Path(tmp) / "demo" / "manifest.json").read_text())
            tokens = manifest.get("tokens", {})
            fig["tokens_in"] = sum(int(v.get("tokens_in", 0)) for v in tokens.values())
            fig["tokens_out"] = sum(int(v.get("tokens_out", 0)) for v in tokens.values())
            out[f"slots_{slots}"] = fig
    out["ratio_wall_n_over_1"] = out[f"slots_{args.slots}"]["wall_s"] / out["slots_1"]["wall_s"]
    return out


def rbr_phase(args: argparse.Namespace) -> dict[str, Any]:
    """`cai rbr eval` on the first K gold rows at 1 slot and at N slots: seconds per response."""
    if not GOLD.is_file():
        return {"skipped": f"no gold set at {GOLD}"}
    out: dict[str, Any] = {}
    for slots in (1, args.slots):
        with tempfile.TemporaryDirectory() as tmp:  # a fresh store each time: nothing answered from a cache
            cmd = [*cai_command(), "rbr", "eval", str(GOLD), "--grader", "local", "--limit", str(args.rbr_limit),
                   "--out", str(Path(tmp) / "store"), "--json", "--quiet"]
            fig = _child(cmd, slots)
        fig["s_per_response"] = fig["wall_s"] / args.rbr_limit
        out[f"slots_{slots}"] = fig
    out["ratio_n_over_1"] = out[f"slots_{args.slots}"]["s_per_response"] / out["slots_1"]["s_per_response"]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--phases", default="demo,rbr,tokens", help="comma-separated: demo, rbr, tokens (default all)")
    ap.add_argument("--slots", type=int, default=8, help="slots of the batched engine (default 8)")
    ap.add_argument("--prompts", type=int, default=8, help="prompts from examples/prompts.jsonl (default 8)")
    ap.add_argument("--max-tokens", type=int, default=64, help="max tokens per reply in `tokens` (default 64)")
    ap.add_argument("--rbr-limit", type=int, default=4, help="gold rows graded in `rbr` (default 4)")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = ap.parse_args(argv)
    phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    res: dict[str, Any] = {"threads": os.cpu_count(), "slots": args.slots, "load_before": os.getloadavg()}
    # Children first: a child's wait4 peak RSS counts this process's memory at fork, and `tokens` loads models here.
    for name, fn in (("demo", demo_phase), ("rbr", rbr_phase), ("tokens", tokens_phase)):
        if name in phases:
            res[name] = fn(args)
    res["load_after"] = os.getloadavg()
    if args.json:
        print(json.dumps(res, indent=2))
        return 0
    print(f"threads {res['threads']}, {args.slots} slots; load average before {res['load_before'][0]:.2f}, "
          f"after {res['load_after'][0]:.2f}")
    if "tokens" in res:
        t = res["tokens"]
        print(f"tokens: {t['prompts']} prompts, max_tokens {args.max_tokens}: 1 slot "
              f"{t['one_slot']['tokens_per_s']:.1f} tokens/s, {args.slots} slots {t['n_slots']['tokens_per_s']:.1f}, "
              f"bare {t['bare']['tokens_per_s']:.1f}; same texts {t['same_texts']}/{t['prompts']}")
        print(f"  generated tokens/s {args.slots} slots ÷ 1 slot = {t['ratio_n_over_1']:.2f}   "
              f"(1 slot ÷ bare = {t['ratio_1_over_bare']:.3f})")
    if "demo" in res:
        d = res["demo"]
        for k in ("slots_1", f"slots_{args.slots}"):
            print(f"demo {k}: {d[k]['wall_s']:.1f} s, peak RSS {d[k]['peak_rss_mb']:.0f} MB, "
                  f"tokens in/out {d[k]['tokens_in']}/{d[k]['tokens_out']}")
        print(f"  README demo wall time {args.slots} slots ÷ 1 slot = {d['ratio_wall_n_over_1']:.3f}")
    if "rbr" in res and "skipped" not in res["rbr"]:
        r = res["rbr"]
        for k in ("slots_1", f"slots_{args.slots}"):
            print(f"rbr eval {k}: {r[k]['s_per_response']:.2f} s/response, peak RSS {r[k]['peak_rss_mb']:.0f} MB")
        print(f"  rbr eval s/response {args.slots} slots ÷ 1 slot = {r['ratio_n_over_1']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
