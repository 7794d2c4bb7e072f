"""Throughput of `cai run --rounds 1` against a bare asyncio + openai SDK loop doing the same calls.

One StubServer process (fixed latency, fixed-length replies) serves both phases:

  bare  a subprocess running a plain asyncio loop over AsyncOpenAI (max_retries=0): per record k=3
        dependent calls (draft; critique with a json_schema response_format; revise), C records in
        flight, prompts of about the same size as cai's (built from the same prompts/ templates);
  cai   `cai run INPUT --rounds 1 --concurrency C --model openai:bench --base-url URL --quiet --json`.

Both are measured the same way: wall time from spawn to exit, and the CPU time (user + system) of the
child from os.wait4. The server's /_stats request count is read before and after each phase.

    python bench/throughput.py                     # N=2000, C=64, L=0.2 s
    python bench/throughput.py --repeat 3 --json   # three alternating rounds, JSON at the end
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import random
import string
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, Server, bench_env, cai_run_cmd, parse_json_stdout, run_child, write_prompts  # noqa: E402

K = 3  # calls per record with --rounds 1: draft, critique, revise
VERDICT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"critique": {"type": "string"}, "violates": {"type": "boolean"},
                   "severity": {"type": "integer", "minimum": 0, "maximum": 3}},
    "required": ["critique", "violates", "severity"], "additionalProperties": False,
}


# -- the bare loop (runs in its own process) ----------------------------------------------------

class Prompts:
    """The critic's and reviser's messages, from the same template files cai uses."""

    def __init__(self) -> None:
        import yaml

        d = REPO / "prompts"
        self.t = {n: string.Template((d / f"{n}.txt").read_text(encoding="utf-8"))
                  for n in ("critic_system", "critique", "reviser_system", "revise")}
        self.fewshot = (yaml.safe_load((d / "fewshot.yaml").read_text(encoding="utf-8")) or {}).get("examples", [])
        const = yaml.safe_load((REPO / "constitution" / "default.yaml").read_text(encoding="utf-8"))
        self.principles = const["principles"]

    @staticmethod
    def _quote(response: str) -> dict[str, str]:
        tag = hashlib.sha256(response.encode()).hexdigest()[:10].upper()
        return {"open": f"<<<RESPONSE {tag}>>>", "close": f"<<<END RESPONSE {tag}>>>", "response": response}

    def _render(self, name: str, **kw: str) -> str:
        return self.t[name].substitute(**kw).strip()

    def critique(self, prompt: str, response: str, request: str) -> list[dict[str, str]]:
        msgs = [{"role": "system", "content": self._render("critic_system")}]
        for ex in self.fewshot:
            msgs.append({"role": "user", "content": self._render(
                "critique", conversation=f"User: {ex['prompt']}", critique_request=ex["critique_request"],
                **self._quote(ex["response"]))})
            msgs.append({"role": "assistant", "content": json.dumps(
                {"critique": ex["critique"], "violates": ex["violates"], "severity": ex["severity"]})})
        msgs.append({"role": "user", "content": self._render(
            "critique", conversation=f"User: {prompt}", critique_request=request, **self._quote(response))})
        return msgs

    def revise(self, prompt: str, response: str, critique: str, request: str) -> list[dict[str, str]]:
        msgs = [{"role": "system", "content": self._render("reviser_system")}]
        for ex in self.fewshot:
            msgs.append({"role": "user", "content": self._render(
                "revise", conversation=f"User: {ex['prompt']}", critique=ex["critique"], feedback="",
                revision_request=ex["revision_request"], **self._quote(ex["response"]))})
            msgs.append({"role": "assistant", "content": ex["revision"]})
        msgs.append({"role": "user", "content": self._render(
            "revise", conversation=f"User: {prompt}", critique=critique, feedback="", revision_request=request,
            **self._quote(response))})
        return msgs


async def bare_loop(input_path: Path, url: str, concurrency: int) -> dict[str, Any]:
    import openai

    prompts = [json.loads(line)["prompt"] for line in input_path.read_text(encoding="utf-8").splitlines() if line]
    tpl = Prompts()
    client = openai.AsyncOpenAI(api_key="bench-no-key", base_url=url, max_retries=0)
    common: dict[str, Any] = {"model": "bench", "max_tokens": 256, "temperature": 0.7, "seed": 0, "timeout": 120.0}
    calls = 0
    queue = iter(enumerate(prompts))

    async def one(i: int, prompt: str) -> None:
        nonlocal calls
        principle = random.Random(i).choice(tpl.principles)
        r = await client.chat.completions.create(messages=[{"role": "user", "content": prompt}], **common)
        draft = (r.choices[0].message.content or "").strip()
        r = await client.chat.completions.create(
            messages=tpl.critique(prompt, draft, principle["critique"]),  # type: ignore[arg-type]
            response_format={"type": "json_schema", "json_schema": {"name": "verdict", "schema": VERDICT_SCHEMA}},
            **common)  # cai's critic gets max(--max-tokens, 128) = 256 too
        verdict = json.loads(r.choices[0].message.content or "{}")
        r = await client.chat.completions.create(
            messages=tpl.revise(prompt, draft, verdict.get("critique", ""), principle["revision"]),  # type: ignore[arg-type]
            **common)
        _ = (r.choices[0].message.content or "").strip()
        calls += 3

    async def worker() -> None:
        for i, prompt in queue:
            await one(i, prompt)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    loop_s = time.perf_counter() - t0
    await client.close()
    return {"records": len(prompts), "calls": calls, "loop_s": loop_s}


# -- the driver ---------------------------------------------------------------------------------

def run_bare(server: Server, inp: Path, concurrency: int) -> dict[str, Any]:
    before, scpu = server.requests(), server.cpu_s()
    res = run_child([sys.executable, __file__, "--_bare", str(inp), server.url, str(concurrency)], env=bench_env())
    if res.returncode != 0:
        raise SystemExit(f"bare loop failed (exit {res.returncode}):\n{res.stderr[-3000:]}")
    inner = json.loads(res.stdout.strip().splitlines()[-1])
    return {"wall_s": res.wall_s, "cpu_s": res.cpu_s, "inner_s": inner["loop_s"],
            "server_requests": server.requests() - before, "server_cpu_s": server.cpu_s() - scpu,
            "maxrss_mb": res.maxrss_mb}


def run_cai(server: Server, inp: Path, concurrency: int, tmp: Path, tag: str,
            profile: Path | None = None) -> dict[str, Any]:
    out = tmp / f"run-{tag}"
    cmd = cai_run_cmd(inp, out, server.url, concurrency)
    if profile is not None:  # same command through cProfile (slower; figures are then not comparable)
        cmd = [sys.executable, "-m", "cProfile", "-o", str(profile), "-m", "cai", *cmd[cmd.index("run"):]]
    before, scpu = server.requests(), server.cpu_s()
    res = run_child(cmd, env=bench_env())
    if res.returncode != 0:
        raise SystemExit(f"cai run failed (exit {res.returncode}):\n{res.stderr[-3000:]}")
    manifest = parse_json_stdout(res.stdout)
    inv = manifest.get("this_invocation", {})
    return {"wall_s": res.wall_s, "cpu_s": res.cpu_s, "inner_s": inv.get("elapsed_s"),
            "server_requests": server.requests() - before, "server_cpu_s": server.cpu_s() - scpu,
            "maxrss_mb": res.maxrss_mb, "calls": inv.get("calls"), "done": manifest.get("records", {}).get("done")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2000, help="prompts (records) per phase (default 2000)")
    ap.add_argument("--concurrency", "-c", type=int, default=64, help="records in flight (default 64)")
    ap.add_argument("--latency", type=float, default=0.2, help="server seconds per request (default 0.2)")
    ap.add_argument("--reply-words", type=int, default=20, help="words per plain reply (default 20)")
    ap.add_argument("--repeat", type=int, default=1, help="alternating bare/cai rounds (default 1)")
    ap.add_argument("--profile", type=Path, default=None,
                    help="also run cai once more under cProfile and write the stats file here")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    ap.add_argument("--_bare", nargs=3, metavar=("INPUT", "URL", "C"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args._bare:
        inp, url, c = args._bare
        print(json.dumps(asyncio.run(bare_loop(Path(inp), url, int(c)))))
        return 0

    n, c, lat = args.n, args.concurrency, args.latency
    theory = c / (K * lat) if lat > 0 else float("inf")
    rounds: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="cai-bench-") as d, Server(lat, args.reply_words) as server:
        tmp = Path(d)
        inp = write_prompts(tmp / "prompts.jsonl", n)
        for i in range(args.repeat):
            bare = run_bare(server, inp, c)
            cai = run_cai(server, inp, c, tmp, str(i))
            for ph in (bare, cai):
                ph["records_per_s"] = n / ph["wall_s"]
                ph["cpu_ms_per_call"] = 1000 * ph["cpu_s"] / (n * K)
                ph["server_cpu_ms_per_call"] = 1000 * ph["server_cpu_s"] / (n * K)
                ph["inner_records_per_s"] = n / ph["inner_s"] if ph.get("inner_s") else None
            rounds.append({"bare": bare, "cai": cai, "ratio": cai["records_per_s"] / bare["records_per_s"]})
            if not args.json:
                print_round(i, rounds[-1], n)
        if args.profile is not None:
            run_cai(server, inp, c, tmp, "profile", args.profile)
            if not args.json:
                print(f"cProfile stats of one more cai run written to {args.profile}")
    ratios = [r["ratio"] for r in rounds]
    summary = {"n": n, "concurrency": c, "latency_s": lat, "reply_words": args.reply_words, "k": K,
               "theoretical_records_per_s": theory, "expected_server_requests": n * K, "rounds": rounds,
               "ratio_min": min(ratios), "ratio_max": max(ratios)}
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"\ntheoretical C/(k·L) = {c}/({K}·{lat:g}) = {theory:.1f} records/s; "
              f"cai ÷ bare over {len(rounds)} round(s): {min(ratios):.3f} … {max(ratios):.3f}")
    return 0


def print_round(i: int, r: dict[str, Any], n: int) -> None:
    print(f"round {i + 1}:")
    for name in ("bare", "cai"):
        ph = r[name]
        inner = f"{ph['inner_records_per_s']:.1f}" if ph["inner_records_per_s"] else "?"
        ok = "ok" if ph["server_requests"] == n * K else f"EXPECTED {n * K}"
        print(f"  {name:<4}  {ph['records_per_s']:7.1f} records/s end to end ({ph['wall_s']:.2f} s; "
              f"{inner}/s inside the loop)  CPU {ph['cpu_ms_per_call']:.2f} ms/call  "
              f"({ph['cpu_s'] / ph['wall_s']:.0%} of a core)  peak RSS {ph['maxrss_mb']:.0f} MB")
        print(f"        server: {ph['server_requests']} requests ({ok}), "
              f"{ph['server_cpu_ms_per_call']:.2f} ms CPU/call")
    print(f"  cai ÷ bare = {r['ratio']:.3f}")


if __name__ == "__main__":
    sys.exit(main())
