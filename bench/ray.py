"""Records/s of `cai run --engine ray` against the local engine at the same total concurrency, and Ray's start-up cost.

One StubServer process (fixed latency, fixed-length replies) serves every phase, over the same N prompts:

  local    `cai run INPUT --rounds 1 --concurrency C --model openai:bench --base-url URL --quiet --json`;
  ray      the same with `--engine ray --workers W` (the Ray runner gives each of the W worker actors C/W
           records in flight, so the total is the same C). Without `--ray-address` cai starts a local Ray
           instance (the machine's CPUs) and shuts it down at exit; each worker actor asks for 1 CPU, so with W
           above that instance's CPUs the extra actors start only as others are killed at the end of their
           share, and the figures are not those of W workers side by side;
  startup  `python -c "import ray; ray.init(num_cpus=W, include_dashboard=False, ...); ray.shutdown()"`, timed
           inside (import, init, W trivial actors started and ready, shutdown) and from spawn to exit.

Each `cai run` is measured end to end (spawn to exit) and inside (`this_invocation.elapsed_s` of its --json
output, which starts after the input is validated and ends after the export; for the ray phase it includes
`ray.init` and the start of the worker actors, but not `import ray` nor the shutdown at exit). CPU time and peak
RSS of the cai process come from os.wait4 on its pid. Ray's own processes (GCS, raylet, the worker actors, ...)
are separate processes: their CPU is sampled from /proc every `--sample` s while the child runs (each process's
own user + system time, last reading before it ended, so a little low), as is their peak RSS (VmHWM; shared
pages count in each process). os.wait4's figures of the cai process also take in the processes it reaped (Ray's
GCS, raylet and monitors are its children): their CPU is added, and the peak RSS is the largest of them all, so
cai's own CPU and VmHWM, read from /proc, are shown next to them.

The script must not import Ray itself: this file is named ray.py, and `python bench/ray.py` puts bench/ first
on sys.path, so the start-up probe runs with `python -c` from the repository root.

    python bench/ray.py                    # N=400, C=64, W=2, L=0.2 s
    python bench/ray.py --n 40 --json      # a quick check, JSON at the end
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Server, bench_env, cai_run_cmd, parse_json_stdout, run_child, write_prompts  # noqa: E402

K = 3  # calls per record with --rounds 1: draft, critique, revise
TICK = os.sysconf("SC_CLK_TCK")

STARTUP = """
import json, sys, time
t0 = time.perf_counter()
import ray
t1 = time.perf_counter()
w, address = int(sys.argv[1]), sys.argv[2] or None
kw = {} if address else {"num_cpus": w}
ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False, **kw)
t2 = time.perf_counter()
@ray.remote(num_cpus=1)
class Probe:
    def ready(self):
        return True
actors = [Probe.remote() for _ in range(w)]
ray.get([a.ready.remote() for a in actors])
t3 = time.perf_counter()
for a in actors:
    ray.kill(a)
ray.shutdown()
t4 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "init_s": t2 - t1, "actors_s": t3 - t2, "shutdown_s": t4 - t3}))
"""


# -- Ray's processes, sampled from /proc --------------------------------------------------------

def _stat(pid: int) -> tuple[int, int, float, str] | None:
    """(ppid, start time, own user + system CPU s, name) of a process, None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    name = raw[raw.find("(") + 1:raw.rfind(")")]
    f = raw.rsplit(")", 1)[1].split()
    return int(f[1]), int(f[19]), (int(f[11]) + int(f[12])) / TICK, name


def _hwm_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class TreeSampler(threading.Thread):
    """While a child of this process runs, reads /proc every `every` s: the child's own CPU, and the CPU and peak
    RSS of every process below it (Ray's). A process once seen below the child stays counted after it is
    re-parented (when the raylet is killed at shutdown, its workers go to init)."""

    def __init__(self, every: float, skip: set[int]) -> None:
        super().__init__(daemon=True)
        self.every, self.skip = every, skip
        self.stop_ev = threading.Event()
        self.child: tuple[int, int] | None = None
        self.child_cpu = 0.0
        self.child_hwm = 0.0
        self.below: dict[tuple[int, int], dict[str, Any]] = {}

    def sample(self) -> None:
        me = os.getpid()
        procs = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit() and (st := _stat(int(entry))) is not None:
                procs[int(entry)] = st
        kids: dict[int, list[int]] = {}
        for pid, (ppid, *_rest) in procs.items():
            kids.setdefault(ppid, []).append(pid)
        for pid in kids.get(me, []):
            if pid not in self.skip and self.child is None:
                self.child = (pid, procs[pid][1])
        if self.child is None or self.child[0] not in procs:
            return
        self.child_cpu = procs[self.child[0]][2]
        self.child_hwm = _hwm_mb(self.child[0]) or self.child_hwm
        todo = list(kids.get(self.child[0], []))
        todo += [pid for (pid, start) in self.below if pid in procs and procs[pid][1] == start]  # re-parented
        seen: set[int] = set()
        while todo:
            pid = todo.pop()
            if pid in seen:
                continue
            seen.add(pid)
            _, start, cpu, name = procs[pid]
            self.below[(pid, start)] = {"name": name, "cpu_s": cpu, "hwm_mb": _hwm_mb(pid) or
                                        self.below.get((pid, start), {}).get("hwm_mb", 0.0)}
            todo += kids.get(pid, [])

    def run(self) -> None:
        while not self.stop_ev.wait(self.every):
            self.sample()

    def result(self) -> dict[str, Any]:
        self.stop_ev.set()
        self.join()
        procs = list(self.below.values())
        by_name: dict[str, float] = {}
        for p in procs:
            by_name[p["name"]] = by_name.get(p["name"], 0.0) + p["cpu_s"]
        return {"self_cpu_s_sampled": self.child_cpu, "self_hwm_mb_sampled": self.child_hwm,
                "ray_processes": len(procs),
                "ray_cpu_s_sampled": sum(p["cpu_s"] for p in procs),
                "ray_cpu_s_by_name": dict(sorted(by_name.items(), key=lambda kv: -kv[1])),
                "ray_max_hwm_mb": max((p["hwm_mb"] for p in procs), default=0.0)}


def measured(cmd: list[str], every: float, skip: set[int], timeout: float) -> tuple[Any, dict[str, Any]]:
    sampler = TreeSampler(every, skip)
    sampler.start()
    res = run_child(cmd, env=bench_env(), timeout=timeout)
    return res, sampler.result()


# -- the phases ---------------------------------------------------------------------------------

def run_cai(server: Server, inp: Path, out: Path, concurrency: int, extra: list[str], every: float,
            timeout: float) -> dict[str, Any]:
    before, scpu = server.requests(), server.cpu_s()
    res, tree = measured(cai_run_cmd(inp, out, server.url, concurrency, extra=extra), every, {server.proc.pid},
                         timeout)
    if res.returncode != 0:
        raise SystemExit(f"cai run {' '.join(extra)} failed (exit {res.returncode}, {res.wall_s:.0f} s):\n"
                         f"{res.stderr[-3000:]}")
    manifest = parse_json_stdout(res.stdout)
    inv = manifest.get("this_invocation", {})
    return {"wall_s": res.wall_s, "inner_s": inv.get("elapsed_s"), "cpu_s": res.cpu_s, "maxrss_mb": res.maxrss_mb,
            **tree, "server_requests": server.requests() - before, "server_cpu_s": server.cpu_s() - scpu,
            "calls": inv.get("calls"), "done": inv.get("done"), "workers_lost": inv.get("workers_lost")}


def run_startup(workers: int, address: str | None, every: float, skip: set[int], timeout: float) -> dict[str, Any]:
    res, tree = measured([sys.executable, "-c", STARTUP, str(workers), address or ""], every, skip, timeout)
    if res.returncode != 0:
        raise SystemExit(f"the Ray start-up probe failed (exit {res.returncode}):\n{res.stderr[-3000:]}")
    return {"wall_s": res.wall_s, "cpu_s": res.cpu_s, "maxrss_mb": res.maxrss_mb,
            **json.loads(res.stdout.strip().splitlines()[-1]), **tree}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=400, help="prompts (records) per phase (default 400)")
    ap.add_argument("--concurrency", "-c", type=int, default=64,
                    help="total records in flight, split between the Ray workers (default 64)")
    ap.add_argument("--workers", "-w", type=int, default=2, help="Ray worker actors (default 2)")
    ap.add_argument("--ray-address", default=None,
                    help="passed to `cai run --ray-address` and the probe (default: a local Ray instance each time)")
    ap.add_argument("--latency", type=float, default=0.2, help="server seconds per request (default 0.2)")
    ap.add_argument("--reply-words", type=int, default=20, help="words per plain reply (default 20)")
    ap.add_argument("--sample", type=float, default=0.5, help="seconds between /proc samples (default 0.5)")
    ap.add_argument("--timeout", type=float, default=600, help="kill a child after this many seconds (default 600)")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = ap.parse_args(argv)

    n, c, w, lat = args.n, args.concurrency, args.workers, args.latency
    ray_extra = ["--engine", "ray", "--workers", str(w)] + (["--ray-address", args.ray_address]
                                                            if args.ray_address else [])
    with tempfile.TemporaryDirectory(prefix="cai-bench-") as d, Server(lat, args.reply_words) as server:
        tmp = Path(d)
        inp = write_prompts(tmp / "prompts.jsonl", n)
        skip = {server.proc.pid}
        local = run_cai(server, inp, tmp / "run-local", c, [], args.sample, args.timeout)
        ray = run_cai(server, inp, tmp / "run-ray", c, ray_extra, args.sample, args.timeout)
        startup = run_startup(w, args.ray_address, args.sample, skip, args.timeout)
    for ph in (local, ray):
        ph["records_per_s"] = n / ph["wall_s"]
        ph["inner_records_per_s"] = n / ph["inner_s"] if ph.get("inner_s") else None
        ph["outside_loop_s"] = ph["wall_s"] - ph["inner_s"] if ph.get("inner_s") is not None else None
        ph["cpu_ms_per_call"] = 1000 * ph["cpu_s"] / (n * K)
    extra_outside = (ray["outside_loop_s"] - local["outside_loop_s"]
                     if ray["outside_loop_s"] is not None and local["outside_loop_s"] is not None else None)
    summary = {"n": n, "concurrency": c, "workers": w, "per_worker_concurrency": -(-c // w), "latency_s": lat,
               "reply_words": args.reply_words, "k": K, "expected_server_requests": n * K,
               "ray_address": args.ray_address, "local": local, "ray": ray, "startup": startup,
               "ratio": ray["records_per_s"] / local["records_per_s"],
               "inner_ratio": (ray["inner_records_per_s"] / local["inner_records_per_s"]
                               if ray["inner_records_per_s"] and local["inner_records_per_s"] else None),
               "ray_extra_outside_loop_s": extra_outside,
               "ray_extra_wall_s": ray["wall_s"] - local["wall_s"]}
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        report(summary)
    return 0


def report(s: dict[str, Any]) -> None:
    n = s["n"]
    print(f"N={n} prompts, --rounds 1 ({n * K} calls), total concurrency {s['concurrency']}, "
          f"latency {s['latency_s']:g} s; ray: {s['workers']} workers × {s['per_worker_concurrency']}")
    for name in ("local", "ray"):
        ph = s[name]
        inner = f"{ph['inner_records_per_s']:.1f}/s in the loop, {ph['inner_s']:.2f} s" if ph["inner_s"] else "?"
        ok = "ok" if ph["server_requests"] == n * K else f"EXPECTED {n * K}"
        print(f"  {name:<5}  {ph['records_per_s']:6.1f} records/s end to end ({ph['wall_s']:.2f} s; {inner})")
        print(f"         cai process (wait4): CPU {ph['cpu_s']:.2f} s ({ph['cpu_ms_per_call']:.2f} ms/call; "
              f"own, from /proc: {ph['self_cpu_s_sampled']:.2f} s), peak RSS {ph['maxrss_mb']:.0f} MB "
              f"(own VmHWM from /proc: {ph['self_hwm_mb_sampled']:.0f} MB)")
        if ph["ray_processes"]:
            top = ", ".join(f"{k} {v:.1f}" for k, v in list(ph["ray_cpu_s_by_name"].items())[:4])
            print(f"         Ray's processes (separate, sampled): {ph['ray_processes']}, "
                  f"CPU {ph['ray_cpu_s_sampled']:.2f} s ({top}), largest peak RSS {ph['ray_max_hwm_mb']:.0f} MB")
        print(f"         server: {ph['server_requests']} requests ({ok}), done {ph['done']}"
              + (f", workers lost {ph['workers_lost']}" if ph["workers_lost"] is not None else ""))
    print(f"  ray ÷ local = {s['ratio']:.3f} end to end"
          + (f", {s['inner_ratio']:.3f} in the loop" if s["inner_ratio"] else ""))
    st = s["startup"]
    print(f"Ray start-up probe (import + init(num_cpus={s['workers']}) + {s['workers']} actors + shutdown): "
          f"{st['wall_s']:.2f} s spawn to exit; import {st['import_s']:.2f}, init {st['init_s']:.2f}, "
          f"actors ready {st['actors_s']:.2f}, shutdown {st['shutdown_s']:.2f} s; "
          f"CPU {st['cpu_s']:.2f} s (wait4) + {st['ray_cpu_s_sampled']:.2f} s in {st['ray_processes']} Ray processes")
    if s["ray_extra_outside_loop_s"] is not None:
        print(f"wall − in-loop: local {s['local']['outside_loop_s']:.2f} s, ray {s['ray']['outside_loop_s']:.2f} s "
              f"(+{s['ray_extra_outside_loop_s']:.2f} s: import ray, shutdown); ray.init and the actors' start are "
              f"inside the ray phase's loop time; ray wall − local wall = {s['ray_extra_wall_s']:+.2f} s")


if __name__ == "__main__":
    sys.exit(main())
