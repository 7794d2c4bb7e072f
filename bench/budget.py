"""The budget (`--max-cost`) on the loopback stub: at each concurrency, a run capped at 40 % of what the uncapped run
costs. Prints, per concurrency, the money the stub's own token counts say was spent against the budget (the
overshoot must be 0), how much of the budget the run used before it stopped, the records done, and whether a
resume with a higher budget gives the uncapped run's exports byte for byte.

    python bench/budget.py [--prompts 40]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "src"), str(REPO / "tests")]

PRICE = {"input": 1000.0, "output": 2000.0}  # USD per million tokens: dear, so that a small run costs dollars
EXPORTS = ("sft.jsonl", "pairs.jsonl", "critiques.jsonl")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=40)
    args = ap.parse_args()
    import cai
    from cai.errors import BudgetExhausted
    from servers import StubServer

    os.environ.setdefault("OPENAI_API_KEY", "sk-bench")
    prompts = [f"Tell me one fact about the number {i}." for i in range(args.prompts)]
    print(f"{'concurrency':>11}  {'budget $':>9}  {'spent $ (stub)':>14}  {'overshoot $':>11}  {'used':>5}  "
          f"{'done':>9}  resume = uncapped")
    with tempfile.TemporaryDirectory() as tmp, StubServer() as srv:
        prices = Path(tmp) / "prices.json"
        prices.write_text(json.dumps({"openai:stub*": PRICE}))
        for concurrency in (1, 8, 64):
            opts = {"model": "openai:stub", "base_url": srv.url, "max_tokens": 16, "rounds": 2, "prices": prices,
                    "concurrency": concurrency}
            full = cai.run(prompts, out=Path(tmp) / f"full{concurrency}", **opts)
            limit = round(full.manifest["estimated_cost_usd"] * 0.4, 4)
            srv.usage.clear()
            out = Path(tmp) / f"capped{concurrency}"
            try:
                cai.run(prompts, out=out, max_cost=limit, **opts)
                done = len(prompts)
            except BudgetExhausted as e:
                done = len(prompts) - e.left
            spent = sum(p * PRICE["input"] + c * PRICE["output"] for p, c in srv.usage) / 1e6
            cai.run(prompts, out=out, max_cost=limit * 10, **opts)
            same = all((out / n).read_bytes() == (full.path / n).read_bytes() for n in EXPORTS)
            print(f"{concurrency:>11}  {limit:>9.4f}  {spent:>14.4f}  {max(spent - limit, 0):>11.4f}  "
                  f"{spent / limit:>5.0%}  {done:>4}/{len(prompts):<4}  {same}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
