"""Tokens/s of cai's embedded `local` provider against a bare llama-cpp-python loop.

Both use the same GGUF (cai.providers.local.default_model_path()), n_ctx=4096, the same thread count
and the same prompts, with max_tokens=64, temperature 0, seed 0:

  cai   await cai.providers.get_model("local").complete(Request(messages=..., config=GenConfig(...)))
  bare  llama_cpp.Llama(model_path=..., n_ctx=4096, n_threads=T).create_chat_completion(...)

One warm-up call each, then the prompt set runs `--repeat` times, alternating cai and bare per prompt so
that drift from other load on the machine hits both alike. tokens/s = completion tokens ÷ wall time.

    python bench/embedded.py                      # 8 prompts × 64 tokens, about a minute on 2 cores
    python bench/embedded.py --prompts 4 --max-tokens 128 --json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import base_prompts  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=8, help="prompts from examples/prompts.jsonl (default 8)")
    ap.add_argument("--max-tokens", type=int, default=64, help="max tokens per reply (default 64)")
    ap.add_argument("--repeat", type=int, default=1, help="passes over the prompts (default 1)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                    help="llama threads for the bare loop; cai's own setting is os.cpu_count() (default that)")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = ap.parse_args(argv)

    from llama_cpp import Llama

    from cai.config import GenConfig, Request
    from cai.providers import get_model
    from cai.providers.local import N_CTX, default_model_path

    path = default_model_path()
    model = get_model("local")
    cfg = GenConfig(max_tokens=args.max_tokens, temperature=0.0, seed=0)
    t0 = time.perf_counter()
    bare = Llama(model_path=str(path), n_ctx=N_CTX, n_threads=args.threads, verbose=False)
    bare_load_s = time.perf_counter() - t0
    prompts = [[{"role": "user", "content": p}] for p in base_prompts()[: args.prompts]]

    async def cai_one(messages: list[dict[str, str]]) -> int:
        comp = await model.complete(Request(messages=tuple(messages), config=cfg))
        return comp.tokens_out

    def bare_one(messages: list[dict[str, str]]) -> int:
        out: Any = bare.create_chat_completion(messages=messages, max_tokens=args.max_tokens,  # type: ignore[arg-type]
                                               temperature=0.0, seed=0)
        return int(out["usage"]["completion_tokens"])

    async def run() -> dict[str, Any]:
        t = time.perf_counter()
        await cai_one(prompts[0])  # warm-up; also loads cai's process-wide llama instance
        cai_warm_s = time.perf_counter() - t
        bare_one(prompts[0])
        tot = {"cai": [0, 0.0], "bare": [0, 0.0]}
        for _ in range(args.repeat):
            for msgs in prompts:
                t = time.perf_counter()
                n = await cai_one(msgs)
                tot["cai"][0] += n
                tot["cai"][1] += time.perf_counter() - t
                t = time.perf_counter()
                n = bare_one(msgs)
                tot["bare"][0] += n
                tot["bare"][1] += time.perf_counter() - t
        return {"cai_warmup_s": cai_warm_s, **{k: {"tokens": v[0], "seconds": v[1], "tokens_per_s": v[0] / v[1]}
                                             for k, v in tot.items()}}

    res = asyncio.run(run())
    res.update({"model": str(path), "threads": args.threads, "cai_threads": os.cpu_count(),
                "prompts": len(prompts), "repeat": args.repeat, "max_tokens": args.max_tokens,
                "bare_load_s": bare_load_s, "ratio": res["cai"]["tokens_per_s"] / res["bare"]["tokens_per_s"]})
    if args.json:
        print(json.dumps(res, indent=2))
        return 0
    print(f"model {path.name}, threads {args.threads} (cai uses {os.cpu_count()}), "
          f"{len(prompts)} prompts × {args.repeat}, max_tokens {args.max_tokens}")
    for k in ("cai", "bare"):
        r = res[k]
        print(f"  {k:<4} {r['tokens_per_s']:7.1f} tokens/s  ({r['tokens']} tokens in {r['seconds']:.2f} s)")
    print(f"  cai ÷ bare = {res['ratio']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
