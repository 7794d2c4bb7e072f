"""Refusal classifier figures per `source_model` of a labelled file (the cross-model check of docs/rbr.md).

Each model's completions are scored on their own, so the figures of a model the rules were not developed on
are that model's held-out figures. `--method grader` asks `--grader` instead (slow on the embedded model: use
`--limit` with `--seed` for a seeded sample).

    python bench/refusal_eval.py ../shared/data/xstest_completions_dev.jsonl
    python bench/refusal_eval.py FILE --method grader --grader local --limit 60 --seed 0 --json
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import refusal_figures_line  # noqa: E402

from cai.cli.kit import run_async  # noqa: E402
from cai.rbr.refusal_eval import classify_rows, evaluate, read_labelled  # noqa: E402
from cai.rbr.refusal_grader import grade_refusals  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT = REPO.parent / "shared" / "data" / "xstest_completions_dev.jsonl"


def predict(rows: list[dict[str, Any]], method: str, model: str) -> tuple[list[str], dict[str, Any]]:
    """Labels for the rows by the classifier or the grader (the grader's calls in a temp store)."""
    if method == "checks":
        return classify_rows(rows), {}
    with tempfile.TemporaryDirectory() as tmp:
        readings, stats = run_async(grade_refusals([(r["prompt"], r["response"]) for r in rows],
                                                   out=Path(tmp) / "store", model=model, base_url=None))
    stats["readings"] = {m: sum(x["method"] == m for x in readings) for m in ("logprobs", "votes", "none")}
    return [x["label"] for x in readings], stats


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("file", nargs="?", type=Path, default=DEFAULT)
    ap.add_argument("--method", choices=("checks", "grader"), default="checks")
    ap.add_argument("--grader", "--model", dest="grader", default="local",
                    help="grader model for --method grader (--model: its old name, as in cai rbr refusal-eval)")
    ap.add_argument("--limit", type=int, help="a seeded random sample of this many rows per source_model")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    rows = read_labelled(args.file)
    out: dict[str, Any] = {"file": str(args.file), "method": args.method}
    for name in sorted({r["source_model"] or "-" for r in rows}):
        sub = [r for r in rows if (r["source_model"] or "-") == name]
        if args.limit and len(sub) > args.limit:
            sub = random.Random(args.seed).sample(sub, args.limit)
        pred, stats = predict(sub, args.method, args.grader)
        result = evaluate(sub, pred)
        out[name] = {"binary": result["binary"], "three_way": {k: result["three_way"][k] for k in
                                                                ("accuracy", "macro_f1", "recall")}, **stats}
    if args.json:
        json.dump(out, sys.stdout, indent=2, sort_keys=True)
        print()
        return 0
    for name, m in out.items():
        if isinstance(m, dict):
            print(refusal_figures_line(name, m["binary"], m["three_way"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
