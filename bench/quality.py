"""The quality gate's figures: for the README demo (the embedded model) and for a loopback run (the stub server),
the share of revision pairs and sft rows each flag is found on and the share it removes under the default gate.

    python bench/quality.py                        # runs the README demo command, then a loopback run
    python bench/quality.py --demo runs/demo       # reads a finished demo run instead of running it
    python bench/quality.py --json

A row kept out by several flags is removed by its first one (the order of docs/export.md), so the "removes"
column adds up to the share of rows kept out.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import EXAMPLES, REPO, Server, cai_command, demo_arguments  # noqa: E402

DEMO = ["run", str(EXAMPLES), "--limit", "6", "--max-tokens", "64"]  # the README's first command, less --out
LOOPBACK_PROMPTS = 200


def figures(run_dir: Path) -> dict[str, Any]:
    """Per part (pairs, sft): rows, kept, and per flag the share of rows flagged and the share removed."""
    import cai
    from cai.read.quality import REASONS

    manifest = cai.open_run(run_dir).manifest
    out: dict[str, Any] = {"gate": manifest["quality"]["gate"]}
    for part in ("pairs", "sft"):
        q = manifest["quality"].get(part) or {"rows": 0, "kept": 0, "flagged": {}, "dropped": {}}
        n = q["rows"] or 1
        out[part] = {"rows": q["rows"], "kept": q["kept"],
                     "flags": {f: {"flagged": q["flagged"].get(f, 0) / n, "removes": q["dropped"].get(f, 0) / n}
                               for f in REASONS if q["flagged"].get(f) or q["dropped"].get(f)}}
    return out


def run_cai(args: list[str]) -> None:
    done = subprocess.run([*cai_command(), *args, "--quiet"], cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"cai {' '.join(args)} exited {done.returncode}: {done.stderr.strip()[-500:]}")


def loopback(tmp: Path) -> Path:
    """A run of the example prompts, repeated, on the stub server (replies of 20 words, under --max-tokens)."""
    lines = EXAMPLES.read_text(encoding="utf-8").splitlines()
    rows = [json.loads(x) for x in lines if x.strip()]
    inp = tmp / "loopback.jsonl"
    copies = [{**r, "id": f"{r.get('id', i)}-{k}"} for k in range(LOOPBACK_PROMPTS // len(rows) + 1)
              for i, r in enumerate(rows)]
    inp.write_text("".join(json.dumps(r) + "\n" for r in copies[:LOOPBACK_PROMPTS]), encoding="utf-8")
    server = Server(reply_words=20)
    try:
        run_cai(["run", str(inp), "--out", str(tmp / "loopback"), "--model", "openai:stub", "--base-url", server.url,
                 "--rounds", "1"])
    finally:
        server.close()
    return tmp / "loopback"


def show(name: str, fig: dict[str, Any]) -> None:
    print(f"{name} (gate {fig['gate']})")
    for part in ("pairs", "sft"):
        p = fig[part]
        kept = p["kept"] / p["rows"] if p["rows"] else 0.0
        print(f"  {part}: {p['rows']} rows, {p['kept']} kept ({kept:.0%})")
        for flag, f in p["flags"].items():
            print(f"    {flag:<16} flagged {f['flagged']:6.1%}   removes {f['removes']:6.1%}")


def main() -> None:
    a = demo_arguments(__doc__)
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        demo = a.demo
        if demo is None:
            demo = tmp / "demo"
            run_cai([*DEMO, "--out", str(demo)])
        results = {"demo": figures(demo), "loopback": figures(loopback(tmp))}
    if a.json:
        print(json.dumps(results, indent=2))
        return
    show("README demo (embedded model)", results["demo"])
    show(f"loopback ({LOOPBACK_PROMPTS} prompts, stub server)", results["loopback"])


if __name__ == "__main__":
    main()
