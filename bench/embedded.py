"""The embedded `local` provider: the shipped Q4_1 weights at 1 slot (the baseline) against the requantized weights
(`--weights`, default q8_0: what `cai run` loads by default) at 1 slot and at each of `--slots`.

Every phase uses cai's own thread count (os.cpu_count()) and loads models the way cai does
(cai.providers.local.new_llama: on a CPU where llama.cpp uses AMX, without its extra buffer types, whose AMX kernels
crash there; the output says which). Phases (`--phases`, default all):

  demo     the README demo, `cai run examples/prompts.jsonl --limit 6 --max-tokens 64` into a fresh folder, as a
           child process: Q4_1 at 1 slot (baseline), `--weights` at 1 slot, `--weights` at each of `--slots`.
           Wall time and its ratio to the baseline, tokens from manifest.json, peak RSS of the child (os.wait4).
  rbr      `cai rbr eval ../shared/data/rbr_gold_dev.jsonl --grader local --limit K` (`--rbr-limit` 4) as a child:
           Q4_1 at 1 slot, `--weights` at 1 slot and at the demo's best slot count: seconds per response, peak RSS.
  tokens   in this process, each weights alone (bare `Llama`, one sequence): prompt evaluation tokens/s of the first
           700 tokens of the fixed text, and generated tokens/s of 64 greedy tokens; then `--prompts` 8 prompts,
           `--max-tokens` 64, temperature 0, seed 0, through get_model("local").complete at 1 slot (one at a time)
           and at the best slot count (all at once): generated tokens/s and how many replies came out identical.
  quality  in this process: the next-token distributions of each candidate (q8_0, q4_0) against the shipped Q4_1's,
           on the fixed text (prompts/fewshot.yaml, then the demo's 6 prompts; at most 1,000 tokens): mean KL
           divergence KL(Q4_1 ‖ candidate) in nats and top-1 agreement. The floor: the same Q4_1 weights evaluated
           one token at a time against all at once (first 256 tokens), i.e. what the kernels alone move.

    python bench/embedded.py                          # about 8 minutes on 2 quiet cores
    python bench/embedded.py --phases quality --json

The children run first (demo, rbr): on Linux a child's wait4 peak RSS includes its parent's memory at fork, and
`tokens` and `quality` load models into this process.
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

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import EXAMPLES, REPO, base_prompts, cai_command, run_child  # noqa: E402

GOLD = REPO.parent / "shared" / "data" / "rbr_gold_dev.jsonl"
BASELINE = "off"  # the shipped Q4_1, loaded as it is


def fixed_text() -> str:
    """The few-shot file, then the README demo's 6 prompts."""
    return (REPO / "prompts" / "fewshot.yaml").read_text(encoding="utf-8") + "\n" + "\n".join(base_prompts()[:6])


def model_path(mode: str) -> str:
    """The file `cai run` loads for the default model under CAI_LOCAL_REQUANTIZE=`mode` (made if needed)."""
    from cai.providers.local import default_model_path
    from cai.providers.local_weights import weights

    return str(weights(default_model_path(), mode, shipped=True).path)


def _child(cmd: list[str], mode: str, slots: int) -> dict[str, Any]:
    """Run `cmd` as a child with CAI_LOCAL_REQUANTIZE=`mode`, CAI_LOCAL_SLOTS=`slots`: wall, CPU, peak RSS."""
    res = run_child(cmd, env=dict(os.environ, CAI_LOCAL_REQUANTIZE=mode, CAI_LOCAL_SLOTS=str(slots)))
    if res.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} exited {res.returncode}: {res.stderr[-2000:]}")
    return {"weights": mode, "slots": slots, "wall_s": res.wall_s, "cpu_s": res.cpu_s, "peak_rss_mb": res.maxrss_mb}


def _configs(args: argparse.Namespace) -> list[tuple[str, int]]:
    return [(BASELINE, 1), (args.weights, 1), *((args.weights, n) for n in args.slots if n > 1)]


def demo_phase(args: argparse.Namespace) -> dict[str, Any]:
    """The README demo at the baseline, the new weights at 1 slot and at each slot count."""
    runs = []
    for mode, slots in _configs(args):
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [*cai_command(), "run", str(EXAMPLES), "--out", str(Path(tmp) / "demo"), "--limit", "6",
                   "--max-tokens", "64", "--quiet"]
            fig = _child(cmd, mode, slots)
            tokens = json.loads((Path(tmp) / "demo" / "manifest.json").read_text()).get("tokens", {})
        fig["tokens_in"] = sum(int(v.get("tokens_in", 0)) for v in tokens.values())
        fig["tokens_out"] = sum(int(v.get("tokens_out", 0)) for v in tokens.values())
        fig["ratio"] = fig["wall_s"] / (runs[0]["wall_s"] if runs else fig["wall_s"])
        runs.append(fig)
    best = min(runs[1:], key=lambda r: r["wall_s"])
    return {"runs": runs, "new_default_ratio": runs[1]["ratio"], "best": best, "best_ratio": best["ratio"]}


def rbr_phase(args: argparse.Namespace, best_slots: int) -> dict[str, Any]:
    """`cai rbr eval` on the first K gold rows: baseline, new weights at 1 slot and at the best slot count."""
    if not GOLD.is_file():
        return {"skipped": f"no gold set at {GOLD}"}
    runs = []
    for mode, slots in [(BASELINE, 1), (args.weights, 1), *([(args.weights, best_slots)] if best_slots > 1 else [])]:
        with tempfile.TemporaryDirectory() as tmp:  # a fresh store each time: nothing answered from a cache
            cmd = [*cai_command(), "rbr", "eval", str(GOLD), "--grader", "local", "--limit", str(args.rbr_limit),
                   "--out", str(Path(tmp) / "store"), "--json", "--quiet"]
            fig = _child(cmd, mode, slots)
        fig["s_per_response"] = fig["wall_s"] / args.rbr_limit
        fig["ratio"] = fig["s_per_response"] / (runs[0]["s_per_response"] if runs else fig["s_per_response"])
        runs.append(fig)
    return {"runs": runs}


def bare_speed(path: str, text: str) -> dict[str, float]:
    """One sequence on a bare `Llama`: prompt evaluation and greedy generation tokens/s (best of 3 and of 2)."""
    from cai.providers.local import new_llama

    llm = new_llama(path, n_ctx=2048)
    try:
        toks = llm.tokenize(text.encode())[:700]
        evals = []
        for _ in range(3):
            llm.reset()
            t = time.perf_counter()
            llm.eval(toks)
            evals.append(time.perf_counter() - t)
        gens = []
        for _ in range(2):
            llm.reset()
            llm.eval(toks[:32])
            t, n = time.perf_counter(), 0
            for _tok in llm.generate(toks[:32], temp=0.0, reset=False):
                n += 1
                if n == 64:
                    break
            gens.append(n / (time.perf_counter() - t))
        return {"prompt_tokens_per_s": len(toks) / min(evals), "gen_tokens_per_s": max(gens)}
    finally:
        llm.close()


def tokens_phase(args: argparse.Namespace, best_slots: int) -> dict[str, Any]:
    """Bare tokens/s of each weights, then the provider at 1 slot and at the best slot count (new weights)."""
    from cai.calls import GenConfig, Request
    from cai.providers import get_model
    from cai.providers.local_slots import set_local_slots
    from cai.providers.local_weights import set_local_requantize

    text = fixed_text()
    bare = {mode: bare_speed(model_path(mode), text) for mode in (BASELINE, args.weights)}
    cfg = GenConfig(max_tokens=args.max_tokens, temperature=0.0, seed=0)
    reqs = [Request(messages=({"role": "user", "content": p},), config=cfg) for p in base_prompts()[: args.prompts]]

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
        return {"slots": slots, "tokens": n, "seconds": secs, "tokens_per_s": n / secs, "texts": [o.text for o in outs]}

    set_local_requantize(args.weights)
    one = asyncio.run(run(1))
    many = asyncio.run(run(best_slots))
    set_local_slots(None)
    set_local_requantize(None)
    same = sum(a == b for a, b in zip(one.pop("texts"), many.pop("texts")))
    return {"bare": bare, "one_slot": one, "n_slots": many, "same_texts": same, "prompts": len(reqs),
            "ratio_n_over_1": many["tokens_per_s"] / one["tokens_per_s"]}


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x -= x.max(axis=1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=1, keepdims=True))


def _logprobs(path: str, tokens: list[int], one_by_one: bool = False) -> np.ndarray:
    """Next-token log-probabilities after each of `tokens` (float32), evaluated together or one at a time."""
    from cai.providers.local import new_llama

    llm = new_llama(path, n_ctx=1024, logits_all=True)
    try:
        for t in [[t] for t in tokens] if one_by_one else [tokens]:
            llm.eval(t)
        out = np.empty((len(tokens), llm.n_vocab()), dtype=np.float32)
        for i in range(0, len(tokens), 128):
            out[i:i + 128] = _log_softmax(np.asarray(llm.scores[i:min(i + 128, len(tokens))]))
        return out
    finally:
        llm.close()


def _compare(ref: np.ndarray, cand: np.ndarray) -> dict[str, float]:
    kl = np.concatenate([(np.exp(ref[i:i + 128].astype(np.float64)) * (ref[i:i + 128] - cand[i:i + 128])).sum(1)
                         for i in range(0, len(ref), 128)])
    return {"mean_kl": float(kl.mean()), "p95_kl": float(np.percentile(kl, 95)),
            "top1_agreement": float((ref.argmax(1) == cand.argmax(1)).mean()), "positions": len(ref)}


def quality_phase(args: argparse.Namespace) -> dict[str, Any]:
    """KL(Q4_1 ‖ candidate) and top-1 agreement on the fixed text; the floor: Q4_1 one token at a time."""
    from cai.providers.local import new_llama

    shipped = model_path(BASELINE)
    probe = new_llama(shipped, n_ctx=64)
    tokens = [int(t) for t in probe.tokenize(fixed_text().encode())[:1000]]
    probe.close()
    ref = _logprobs(shipped, tokens)
    out: dict[str, Any] = {}
    for mode in dict.fromkeys(["q8_0", "q4_0", args.weights]):
        path = model_path(mode)
        out[mode] = {**_compare(ref, _logprobs(path, tokens)), "file_mb": os.path.getsize(path) / 1e6}
    out["floor"] = _compare(ref[:256], _logprobs(shipped, tokens[:256], one_by_one=True))
    out["q4_1_file_mb"] = os.path.getsize(shipped) / 1e6
    return out


def report(res: dict[str, Any], args: argparse.Namespace) -> None:
    """The figures as text."""
    amx = "" if res["extra_buffer_types"] else " (this CPU: llama.cpp uses AMX, so every model loads without its " \
                                               "extra buffer types, the baseline Q4_1 included; with them it crashes)"
    print(f"threads {res['threads']}; weights {args.weights}; load average before {res['load_before'][0]:.2f}, "
          f"after {res['load_after'][0]:.2f}{amx}")
    if "demo" in res:
        for r in res["demo"]["runs"]:
            print(f"demo {r['weights']:>4} weights, {r['slots']} slot(s): {r['wall_s']:.1f} s (÷ baseline "
                  f"{r['ratio']:.3f}), peak RSS {r['peak_rss_mb']:.0f} MB, tokens in/out {r['tokens_in']}/"
                  f"{r['tokens_out']}")
        d = res["demo"]
        print(f"  README demo, new default ÷ shipped Q4_1 at 1 slot = {d['new_default_ratio']:.3f}; best "
              f"({d['best']['slots']} slots) ÷ the same = {d['best_ratio']:.3f}")
    if "rbr" in res and "skipped" not in res["rbr"]:
        for r in res["rbr"]["runs"]:
            print(f"rbr eval {r['weights']:>4} weights, {r['slots']} slot(s): {r['s_per_response']:.2f} s/response "
                  f"(÷ baseline {r['ratio']:.3f}), peak RSS {r['peak_rss_mb']:.0f} MB")
    if "tokens" in res:
        t = res["tokens"]
        for mode, b in t["bare"].items():
            print(f"tokens {mode:>4} weights, one sequence: prompt evaluation {b['prompt_tokens_per_s']:.0f} "
                  f"tokens/s, generation {b['gen_tokens_per_s']:.0f} tokens/s")
        print(f"tokens {args.weights} weights, {t['prompts']} prompts: 1 slot {t['one_slot']['tokens_per_s']:.1f} "
              f"tokens/s, {t['n_slots']['slots']} slots {t['n_slots']['tokens_per_s']:.1f} "
              f"(× {t['ratio_n_over_1']:.2f}); same texts {t['same_texts']}/{t['prompts']}")
    if "quality" in res:
        q = res["quality"]
        for mode in [m for m in q if m not in ("floor", "q4_1_file_mb")]:
            print(f"quality {mode} against the shipped Q4_1 ({q['q4_1_file_mb']:.0f} MB → {q[mode]['file_mb']:.0f} "
                  f"MB): mean KL {q[mode]['mean_kl']:.4f} nats (p95 {q[mode]['p95_kl']:.4f}), top-1 agreement "
                  f"{q[mode]['top1_agreement']:.3f} over {q[mode]['positions']} positions")
        f = q["floor"]
        print(f"  floor (Q4_1 one token at a time against all at once): mean KL {f['mean_kl']:.4f} nats, top-1 "
              f"agreement {f['top1_agreement']:.3f} over {f['positions']} positions")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--phases", default="demo,rbr,tokens,quality", help="comma-separated (default all)")
    ap.add_argument("--weights", default="q8_0", choices=["q8_0", "q4_0"], help="requantized weights (default q8_0)")
    ap.add_argument("--slots", default="4,8", help="slot counts tried with the new weights (default 4,8)")
    ap.add_argument("--prompts", type=int, default=8, help="prompts from examples/prompts.jsonl (default 8)")
    ap.add_argument("--max-tokens", type=int, default=64, help="max tokens per reply in `tokens` (default 64)")
    ap.add_argument("--rbr-limit", type=int, default=4, help="gold rows graded in `rbr` (default 4)")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = ap.parse_args(argv)
    args.slots = sorted({int(n) for n in args.slots.split(",") if n.strip()})
    phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    res: dict[str, Any] = {"threads": os.cpu_count(), "weights": args.weights, "load_before": os.getloadavg()}
    if "demo" in phases:
        res["demo"] = demo_phase(args)
    best = res["demo"]["best"]["slots"] if "demo" in res else max(args.slots)
    if "rbr" in phases:
        res["rbr"] = rbr_phase(args, best)
    if "tokens" in phases:
        res["tokens"] = tokens_phase(args, max(best, 2))
    if "quality" in phases:
        res["quality"] = quality_phase(args)
    res["load_after"] = os.getloadavg()
    from cai.providers.local import extra_buffer_types  # imported last: llama.cpp in this process would count in
                                                        # the children's peak RSS (inherited at fork)
    res["extra_buffer_types"] = extra_buffer_types()
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        report(res, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
