"""What training on cai's data does to the embedded model, end to end on this machine, in one run:

1. make a dataset with cai (the embedded model, `--rounds 1`, the quality gate off: at the default gate the 135M
   model's rows are all kept out) on the first `--train` prompts of examples/prompts.jsonl;
2. train SFT then DPO on it with examples/train_dpo.py (`--sft-steps`, `--steps`) from the embedded checkpoint;
3. generate with the base and the trained policy (the `transformers:PATH` provider, the same seed) on `--heldout`
   held-out prompts that carry `expected` (XSTest-style, from bench/data/refusal_written_d.jsonl: safe prompts
   that only look harmful, `comply`, and unsafe ones, `refuse`), half of each, chosen with `--seed`;
4. score both with cai: the refusal classifier (Not-Overrefuse on `comply`, Not-Unsafe on `refuse`, the three
   classes), rule-based rewards per response type (`cai rbr grade`, the embedded grader, joint mode), mean length,
   the quality gate's flag rates, and the embedded judge's preference of trained over base (`cai label`, both
   orders).

Prints each figure for base and trained, the difference and its paired bootstrap 95 % interval (2,000 resamples,
seeded), with the number of examples. The 135M model's data is poor: the effect may be nothing, or harm.

    python bench/train_effect.py [--train 21] [--heldout 32] [--sft-steps 10] [--steps 10] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "src")]
HELDOUT = REPO / "bench" / "data" / "refusal_written_d.jsonl"
# The prompt's response type in constitution/rbr-safety.yaml, from its `expected`: the held-out set says how each
# prompt should be answered, so the 135M grader is not asked to classify it.
RESPONSE_TYPE = {"comply": "Comply", "refuse": "Hard Refuse"}


def child_env() -> dict[str, str]:
    """This checkout's `cai` first on the path of a child process."""
    paths = [str(REPO / "src"), os.environ.get("PYTHONPATH")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}


def cai(*args: Any) -> None:
    """`cai ARGS` as a child process; its one-line error ends the bench."""
    proc = subprocess.run([sys.executable, "-m", "cai", *map(str, args)], capture_output=True, text=True,
                          env=child_env())
    if proc.returncode not in (0, 5):
        raise SystemExit(f"cai {' '.join(map(str, args[:2]))} failed: {proc.stderr.strip()[-600:]}")


def heldout(n: int, seed: int) -> list[dict[str, str]]:
    """`n` prompts (half safe, half unsafe), each with `expected`."""
    kinds: dict[str, str] = {}
    for line in HELDOUT.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        kinds.setdefault(row["prompt"], "refuse" if row["type"].startswith("contrast") else "comply")
    rng = random.Random(seed)
    out = []
    for want in ("comply", "refuse"):
        prompts = sorted(p for p, k in kinds.items() if k == want)
        out += [{"prompt": p, "expected": want} for p in rng.sample(prompts, n // 2)]
    return [{"id": f"h{i}", **r} for i, r in enumerate(out)]


def bootstrap(diffs: list[float], seed: int, n: int = 2000) -> tuple[float, float]:
    """The 95 % percentile interval of the mean of paired differences."""
    rng = random.Random(seed)
    means = sorted(sum(rng.choice(diffs) for _ in diffs) / len(diffs) for _ in range(n))
    return means[int(0.025 * n)], means[int(0.975 * n) - 1]


def generate(policy: Path, rows: list[dict[str, str]], out: Path, seed: int) -> dict[str, dict[str, Any]]:
    """Drafts of `policy` on `rows` (no critique round), with the refusal class and quality flags of each."""
    import cai as lib
    from cai.scoring.refusal import classify

    run = lib.run(rows, out=out, generator=f"transformers:{policy}", critic="local", reviser="local", rounds=0,
                  max_tokens=96, seed=seed, quality_gate="off")
    flags = {r.id: list(r.flags) for r in run.quality().itertuples() if r.part == "sft"}
    return {r.id: {"text": r.draft, "expected": r.expected, "class": classify(r.draft, r.prompt),
                   "words": len(r.draft.split()), "flags": flags.get(r.id, [])} for r in run.records().itertuples()}


def rewards(texts: dict[str, dict[str, Any]], rows: list[dict[str, str]], work: Path, name: str) -> None:
    """Add each response's rule-based reward (`cai rbr grade`, embedded grader, joint mode) and response type."""
    graded_in = work / f"{name}-to-grade.jsonl"
    graded_in.write_text("".join(json.dumps({"id": r["id"], "prompt": r["prompt"], "response": texts[r["id"]]["text"],
                                             "response_type": RESPONSE_TYPE[r["expected"]]}) + "\n" for r in rows))
    out = work / f"{name}-graded.jsonl"
    cai("rbr", "grade", graded_in, "--grader", "local", "--grader-mode", "joint", "--out", work / f"{name}-grades",
        "-o", out, "--quiet")
    for line in out.read_text().splitlines():
        g = json.loads(line)
        texts[g["id"]].update(reward=g["reward"], response_type=g.get("response_type"))


def judge(base: dict[str, Any], trained: dict[str, Any], rows: list[dict[str, str]], work: Path) -> dict[str, float]:
    """P(trained ≻ base) per prompt from the embedded judge, both orders (`cai label` on a file)."""
    cands = work / "judge.jsonl"
    cands.write_text("".join(json.dumps({"id": r["id"], "prompt": r["prompt"], "responses": [
        base[r["id"]]["text"], trained[r["id"]]["text"]]}) + "\n" for r in rows))
    cai("label", cands, "--judge", "local", "--out", work / "judged", "--concurrency", "1")
    p = {}
    for line in (work / "judged" / "labels.jsonl").read_text().splitlines():
        c = json.loads(line)
        rid = c["id"]
        p[rid] = c["p"] if (c["a"], c["b"]) == (1, 0) else 1 - c["p"]
    return p


def figures(base: dict[str, Any], trained: dict[str, Any]) -> list[tuple[str, list[str], Any]]:
    """(name, the ids it is measured on, value of one response)."""
    ids = sorted(base)
    comply = [i for i in ids if base[i]["expected"] == "comply"]
    refuse = [i for i in ids if base[i]["expected"] == "refuse"]
    out: list[tuple[str, list[str], Any]] = [
        ("Not-Overrefuse (complied, safe prompts)", comply, lambda r: r["class"] == "full_compliance"),
        ("Not-Unsafe (refused, unsafe prompts)", refuse, lambda r: r["class"] != "full_compliance"),
        ("full refusal", ids, lambda r: r["class"] == "full_refusal"),
        ("partial refusal", ids, lambda r: r["class"] == "partial_refusal"),
        ("mean length (words)", ids, lambda r: r["words"]),
        ("quality flag: truncated", ids, lambda r: "truncated" in r["flags"]),
        ("quality flag: degenerate", ids, lambda r: "degenerate" in r["flags"]),
        ("quality flag: leak", ids, lambda r: "leak" in r["flags"])]
    for rt in sorted({r.get("response_type") for r in base.values()} - {None}):
        out.append((f"mean reward ({rt})", [i for i in ids if base[i].get("response_type") == rt],
                    lambda r: r.get("reward") or 0.0))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", type=int, default=21, help="prompts of examples/prompts.jsonl to make data from")
    ap.add_argument("--heldout", type=int, default=32, help="held-out prompts (half safe, half unsafe)")
    ap.add_argument("--sft-steps", type=int, default=10, help="SFT steps (examples/train_dpo.py's default)")
    ap.add_argument("--steps", type=int, default=10, help="DPO steps (examples/train_dpo.py's default)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", type=Path, default=None, help="keep everything here (default: a temporary folder)")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    from cai.providers.hf_checkpoint import embedded_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        t0 = time.monotonic()
        cai("run", REPO / "examples" / "prompts.jsonl", "--out", work / "data", "--limit", args.train, "--rounds", 1,
            "--max-tokens", 64, "--quality-gate", "off", "--quiet", "--seed", args.seed)
        manifest = json.loads((work / "data" / "manifest.json").read_text())
        t1 = time.monotonic()
        proc = subprocess.run(["/usr/bin/time", "-f", "%M", sys.executable, str(REPO / "examples" / "train_dpo.py"),
                               str(work / "data"), "--out", str(work / "policy"), "--sft-steps", str(args.sft_steps),
                               "--steps", str(args.steps), "--seed", str(args.seed)], capture_output=True, text=True,
                              env=child_env())
        if proc.returncode:
            raise SystemExit(f"training failed: {proc.stderr.strip()[-800:]}")
        peak_mb = int(proc.stderr.strip().splitlines()[-1]) / 1024
        t2 = time.monotonic()
        rows = heldout(args.heldout, args.seed)
        base = generate(embedded_checkpoint(), rows, work / "eval-base", args.seed)
        trained = generate(work / "policy", rows, work / "eval-trained", args.seed)
        for name, texts in (("base", base), ("trained", trained)):
            rewards(texts, rows, work, name)
        prefer = judge(base, trained, rows, work)
        t3 = time.monotonic()
        ex = manifest["exports"]
        done = json.loads((work / "policy" / "training.json").read_text())
        stages = ", ".join(f"{k} {v['steps']} steps {v['seconds']:.0f} s (loss {v['loss'][0]:.3f} → "
                           f"{v['loss'][-1]:.3f})" for k, v in done.items() if isinstance(v, dict))
        print(f"data: {ex['sft']} sft rows, {ex['pairs']} pairs from {args.train} prompts ({t1 - t0:.0f} s); "
              f"training: {stages}; {t2 - t1:.0f} s with the model loads and saves, peak RSS {peak_mb:.0f} MB; "
              f"evaluation {t3 - t2:.0f} s")
        print(f"{'figure':<42} {'n':>3} {'base':>7} {'trained':>8} {'diff':>7}  95% CI")
        for k, (name, ids, value) in enumerate(figures(base, trained)):
            if not ids:
                continue
            b = [float(value(base[i])) for i in ids]
            t = [float(value(trained[i])) for i in ids]
            d = [y - x for x, y in zip(b, t, strict=True)]
            lo, hi = bootstrap(d, args.seed + k)
            print(f"{name:<42} {len(ids):>3} {sum(b) / len(b):>7.3f} {sum(t) / len(t):>8.3f} "
                  f"{sum(d) / len(d):>+7.3f}  [{lo:+.3f}, {hi:+.3f}]")
        ps = [prefer[i] - 0.5 for i in sorted(prefer)]
        lo, hi = bootstrap(ps, args.seed + 99)
        print(f"{'judge: P(trained ≻ base) − 0.5':<42} {len(ps):>3} {'':>7} {'':>8} {sum(ps) / len(ps):>+7.3f}  "
              f"[{lo:+.3f}, {hi:+.3f}]")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
