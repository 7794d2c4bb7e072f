"""Tokens and cost per preference pair: `cai run` (all few-shot examples, and `--fewshot 0`) against a batch job.

One `tests/batch_servers.py` BatchServer (a StubServer that also serves the OpenAI Files + Batches and the
Anthropic Message Batches APIs) runs in this process, on loopback: its batches move only when this script
calls `finish_all()`, so it cannot run as a separate process like the other benchmarks' StubServer. Every
cai invocation is a child process (`cai run … --json`, `cai batch submit … --json`, `cai batch tick … --json`)
in a fresh temporary run folder. For each provider (`--providers`) three phases run over the same `--n`
prompts with `--rounds 1`, `--max-tokens`, `--seed`:

  a  `cai run` as shipped (few-shot: every worked example in prompts/fewshot.yaml), synchronous API;
  b  the same with `--fewshot 0`;
  c  `cai batch submit` with a's options, then `finish_all()` + `cai batch tick` until the job is complete.

Tokens per pair = the manifest's tokens_in and tokens_out summed over all roles ÷ `exports.pairs` (also shown
per record done). For c it also prints the ticks needed, the requests submitted in provider batches against
the model calls a made (server count and manifest calls), and whether a and c sent the same request bodies.
Cost per 1,000 pairs uses the shipped price table (`cai.core.prices`): a and b at the standard price, c at the
batch price; cached / cache-write prompt tokens at their own prices (the stub reports none unless it is told
to: see the printed note).

The StubServer counts tokens as whitespace-separated words: prompt tokens = the words of the request's
message texts (system included; not the JSON schema / tool definition), completion tokens = the words of
the reply (`--reply-words` for plain text, cut at max_tokens; the JSON text of a structured verdict). The
absolute figures are that approximation; the ratios between a, b and c are the point.

    python bench/batch_cost.py                 # N=200, both providers
    python bench/batch_cost.py --n 50 --providers openai --json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, bench_env, cai_command, parse_json_stdout, run_child, write_prompts  # noqa: E402

sys.path.insert(0, str(REPO / "tests"))
from batch_servers import BatchServer  # noqa: E402
from cai.core.prices import call_price, cost, load_prices  # noqa: E402

ROUNDS = 1
PATHS = {"openai": "/v1/chat/completions", "anthropic": "/v1/messages"}
WAITING = 75  # `cai batch tick`: still waiting on the provider


def options(model: str, url: str, max_tokens: int, seed: int) -> list[str]:
    return ["--rounds", str(ROUNDS), "--model", model, "--base-url", url, "--max-tokens", str(max_tokens),
            "--seed", str(seed)]


def child_env() -> dict[str, str]:
    env = bench_env()
    env.pop("ANTHROPIC_API_KEY", None)
    env["ANTHROPIC_API_KEY"] = "loopback-dummy"  # the SDK wants one; the loopback server ignores it
    env.pop("ANTHROPIC_BASE_URL", None)
    env.pop("OPENAI_BASE_URL", None)
    return env


def cai(args: list[str], ok: tuple[int, ...] = (0,)) -> tuple[dict[str, Any], float, int]:
    res = run_child([*cai_command(), *args], env=child_env(), timeout=600)
    if res.returncode not in ok:
        raise SystemExit(f"`cai {' '.join(args[:2])}` failed (exit {res.returncode}):\n{res.stderr[-3000:]}")
    return parse_json_stdout(res.stdout), res.wall_s, res.returncode


def canonical(bodies: list[Any]) -> Counter[str]:
    return Counter(json.dumps(b, sort_keys=True, ensure_ascii=False) for b in bodies)


def posted(srv: BatchServer, start: int, path: str) -> list[Any]:
    with srv._lock:
        return [r["body"] for r in srv.requests[start:] if r["path"] == path]


def totals(manifest: dict[str, Any]) -> dict[str, int]:
    out = Counter[str]()
    for t in manifest.get("tokens", {}).values():
        for k in ("calls", "tokens_in", "tokens_out", "tokens_cached", "tokens_cache_write"):
            out[k] += int(t.get(k, 0))
    return dict(out)


def figures(manifest: dict[str, Any]) -> dict[str, Any]:
    t = totals(manifest)
    pairs = int(manifest["exports"]["pairs"])
    done = int(manifest["records"].get("done", 0))
    per = {}
    for name, d in (("pair", pairs), ("record", done)):
        per[name] = {k: (t[k] / d if d else None) for k in ("tokens_in", "tokens_out", "tokens_cached",
                                                             "tokens_cache_write")}
    roles = {role: {k: (r.get(k, 0) / pairs if pairs else None) for k in ("tokens_in", "tokens_out")}
             for role, r in sorted(manifest.get("tokens", {}).items())}
    return {"records_done": done, "records_failed": int(manifest["records"].get("failed", 0)), "pairs": pairs,
            "tokens": t, "per": per, "per_pair_by_role": roles, "manifest_cost_usd": manifest.get("estimated_cost_usd")}


def sync_phase(srv: BatchServer, provider: str, inp: Path, out: Path, opts: list[str],
               extra: list[str]) -> dict[str, Any]:
    start = len(srv.requests)
    manifest, wall, _ = cai(["run", str(inp), "--out", str(out), *opts, "--quiet", "--json", *extra])
    bodies = posted(srv, start, PATHS[provider])
    f = figures(manifest)
    f.update(wall_s=round(wall, 2), server_requests=len(bodies),
             manifest_calls=int((manifest.get("this_invocation") or {}).get("calls", f["tokens"]["calls"])),
             cache_control_requests=sum("cache_control" in json.dumps(b) for b in bodies))
    f["_bodies"] = canonical(bodies)
    return f


def batch_phase(srv: BatchServer, provider: str, inp: Path, out: Path, opts: list[str],
                max_ticks: int) -> dict[str, Any]:
    start, known = len(srv.requests), set(srv.submitted)
    report, wall, _ = cai(["batch", "submit", str(inp), "--out", str(out), *opts, "--json"])
    ticks, tick_codes, submitted_per_pass = 0, [], [sum(b["requests"] for b in report.get("submitted", []))]
    while not report.get("complete"):
        if ticks >= max_ticks:
            raise SystemExit(f"batch job not complete after {max_ticks} ticks: {json.dumps(report)[:2000]}")
        srv.finish_all()
        report, w, code = cai(["batch", "tick", str(out), "--json"], ok=(0, WAITING))
        wall += w
        ticks += 1
        tick_codes.append(code)
        submitted_per_pass.append(sum(b["requests"] for b in report.get("submitted", [])))
    manifest = report.get("manifest") or json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    new = [b for b in srv.batches(provider) if b.id not in known]
    bodies = [r.body for b in new for r in b.requests]
    f = figures(manifest)
    f.update(wall_s=round(wall, 2), ticks=ticks, tick_exit_codes=tick_codes, provider_batches=len(new),
             submitted_requests=sum(srv.submitted[b.id] for b in new), submitted_per_pass=submitted_per_pass,
             sync_requests_during_job=len(posted(srv, start, PATHS[provider])),
             cache_control_requests=sum("cache_control" in json.dumps(b) for b in bodies))
    sizes = [len(json.dumps(b, ensure_ascii=False).encode()) for b in bodies]
    f["request_bytes"] = {"mean": round(sum(sizes) / len(sizes)) if sizes else None, "max": max(sizes, default=None)}
    f["_bodies"] = canonical(bodies)
    return f


def measure(provider: str, model: str, inp: Path, tmp: Path, args: argparse.Namespace) -> dict[str, Any]:
    with BatchServer(reply_words=args.reply_words) as srv:
        url = srv.url if provider == "openai" else srv.anthropic_url
        opts = options(model, url, args.max_tokens, args.seed)
        a = sync_phase(srv, provider, inp, tmp / f"{provider}-a", opts, [])
        b = sync_phase(srv, provider, inp, tmp / f"{provider}-b", opts, ["--fewshot", "0"])
        c = batch_phase(srv, provider, inp, tmp / f"{provider}-c", opts, args.max_ticks)
    same_bodies = a.pop("_bodies") == c.pop("_bodies")
    b.pop("_bodies")
    c["requests_equal"] = c["submitted_requests"] == a["server_requests"] == a["manifest_calls"]
    c["same_request_bodies_as_a"] = same_bodies
    prices = load_prices()
    costs = {}
    for name, ph, batch in (("a", a, False), ("b", b, False), ("c", c, True)):
        rates = call_price(model, prices, batch)
        if rates is None or not ph["pairs"]:
            costs[name] = None
            continue
        usd = cost(ph["tokens"], rates)
        costs[name] = {"price": "batch" if batch else "standard", "rates": rates, "usd_run": round(usd, 6),
                       "usd_per_1000_pairs": usd / ph["pairs"] * 1000}
    return {"provider": provider, "model": model, "a": a, "b": b, "c": c, "cost": costs}


def fmt(x: float | None, digits: int = 1) -> str:
    return "n/a" if x is None else f"{x:,.{digits}f}"


def show(r: dict[str, Any]) -> None:
    a, b, c, costs = r["a"], r["b"], r["c"], r["cost"]
    print(f"\n== {r['provider']} API, model {r['model']} ==")
    print(f"{'phase':<32} {'records':>7} {'pairs':>5} {'calls':>5} {'in/pair':>8} {'out/pair':>8} "
          f"{'in/rec':>8} {'out/rec':>8} {'cached/pair':>11} {'wall s':>6}")
    for label, ph in (("a  cai run (all few-shot)", a), ("b  cai run --fewshot 0", b),
                      ("c  batch job (all few-shot)", c)):
        pp, pr = ph["per"]["pair"], ph["per"]["record"]
        print(f"{label:<32} {ph['records_done']:>7} {ph['pairs']:>5} {ph['tokens']['calls']:>5} "
              f"{fmt(pp['tokens_in']):>8} {fmt(pp['tokens_out']):>8} {fmt(pr['tokens_in']):>8} "
              f"{fmt(pr['tokens_out']):>8} {fmt(pp['tokens_cached']):>11} {ph['wall_s']:>6.1f}")
    for label, ph in (("a", a), ("b", b)):
        print(f"  {label} per pair by role (in/out): " + ", ".join(
            f"{role} {fmt(v['tokens_in'])}/{fmt(v['tokens_out'])}" for role, v in ph["per_pair_by_role"].items()))
    print(f"b ÷ a tokens in: {b['tokens']['tokens_in'] / a['tokens']['tokens_in']:.3f}; "
          f"c ÷ a tokens in: {c['tokens']['tokens_in'] / a['tokens']['tokens_in']:.3f}, "
          f"out: {c['tokens']['tokens_out'] / a['tokens']['tokens_out']:.3f}")
    print(f"c: {c['ticks']} ticks after the submit (exit codes {c['tick_exit_codes']}), {c['provider_batches']} "
          f"provider batches, requests per pass {c['submitted_per_pass']}; request bodies "
          f"{c['request_bytes']['mean']} bytes on average, {c['request_bytes']['max']} at most")
    print(f"requests submitted in batches (c): {c['submitted_requests']}; model calls of the plain run (a): "
          f"{a['server_requests']} (server), {a['manifest_calls']} (manifest calls) -> "
          f"{'EQUAL' if c['requests_equal'] else 'NOT EQUAL'}")
    print(f"same request bodies in a and c: {'yes' if c['same_request_bodies_as_a'] else 'NO'}; synchronous "
          f"model calls during the batch job: {c['sync_requests_during_job']}")
    print(f"requests carrying cache_control: a {a['cache_control_requests']}, b {b['cache_control_requests']}, "
          f"c {c['cache_control_requests']}; prompt-cache tokens the stub reported: "
          f"{a['tokens']['tokens_cached'] + c['tokens']['tokens_cached']} read, "
          f"{a['tokens']['tokens_cache_write'] + c['tokens']['tokens_cache_write']} written")
    print("cost per 1,000 pairs (shipped prices): " + "; ".join(
        f"{k} ${v['usd_per_1000_pairs']:.4f} ({v['price']})" if v else f"{k} n/a" for k, v in costs.items()))
    mc = [r[k]["manifest_cost_usd"] for k in "abc"]
    print(f"  cross-check, the manifests' estimated_cost_usd for the whole run: a {mc[0]}, b {mc[1]}, c {mc[2]}; "
          f"computed here: {', '.join(str(v['usd_run']) if v else 'n/a' for v in costs.values())}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200, help="prompts (default 200)")
    ap.add_argument("--max-tokens", type=int, default=256, help="cai --max-tokens (default 256)")
    ap.add_argument("--reply-words", type=int, default=40,
                    help="words in each plain stub reply, i.e. its output tokens (default 40)")
    ap.add_argument("--seed", type=int, default=0, help="cai --seed (default 0)")
    ap.add_argument("--providers", default="openai,anthropic",
                    help="comma-separated: openai, anthropic (default both)")
    ap.add_argument("--openai-model", default="openai:gpt-4o-mini", help="default openai:gpt-4o-mini")
    ap.add_argument("--anthropic-model", default="anthropic:claude-haiku-4-5",
                    help="default anthropic:claude-haiku-4-5")
    ap.add_argument("--max-ticks", type=int, default=20, help="give up on the batch job after this many ticks")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = ap.parse_args(argv)
    providers = [p.strip() for p in args.providers.split(",") if p.strip()]
    if not providers or set(providers) - set(PATHS):
        ap.error(f"--providers: choose from {', '.join(PATHS)}")

    results = []
    with tempfile.TemporaryDirectory(prefix="cai-bench-batch-") as d:
        tmp = Path(d)
        inp = write_prompts(tmp / "prompts.jsonl", args.n)
        for p in providers:
            results.append(measure(p, args.openai_model if p == "openai" else args.anthropic_model, inp, tmp, args))
    note = ("Token counts are the StubServer's own approximation (words of the request's message texts in, "
            "words of the reply out; schemas and tool definitions not counted); compare the phases, not the "
            "absolute numbers. The stub reports prompt-cache usage only when it is started with cached_tokens / "
            "cache_write_tokens (not here), so no cached tokens are priced.")
    summary = {"n": args.n, "rounds": ROUNDS, "max_tokens": args.max_tokens, "reply_words": args.reply_words,
               "seed": args.seed, "results": results, "note": note}
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"{args.n} prompts, --rounds {ROUNDS}, --max-tokens {args.max_tokens}, stub replies of "
          f"{args.reply_words} words, --seed {args.seed}")
    for r in results:
        show(r)
    print(f"\nNote: {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
