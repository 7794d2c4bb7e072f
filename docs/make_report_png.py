"""Make docs/report.png: the report of a small demo run on the embedded model, AI labels included, with its first
record opened, as the system's chromium renders it (driven by playwright). Offline: the run uses the embedded
SmolLM2-135M (the `local` extra) and the page fetches nothing.

    python docs/make_report_png.py                  # -> docs/report.png
    python docs/make_report_png.py --out shot.png   # anywhere else
    python docs/make_report_png.py --run runs/demo  # keep the run there (a finished one is reused, no model call)

Needs the `report` extra (matplotlib), playwright (the `dev` extra) and a chromium binary (`apt-get install
chromium`, or CAI_CHROMIUM=/path/to/chrome).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUN = ["run", str(ROOT / "examples" / "prompts.jsonl"), "--limit", "3", "--max-tokens", "48", "--rounds", "1",
       "--candidates", "2", "--quiet"]  # a few minutes on two CPU cores
WIDTH = 1200


def chromium() -> str:
    """The chromium binary: CAI_CHROMIUM, else the first of chromium, chromium-browser, google-chrome on PATH."""
    for name in (os.environ.get("CAI_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if name and (found := shutil.which(name)):
            return found
    sys.exit("no chromium binary found: apt-get install chromium, or set CAI_CHROMIUM")


def cai(*args: str) -> None:
    """`python -m cai ARGS`, with this checkout's cai first on the path; exits with its code if it fails."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"),
                                                                      os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-m", "cai", *args], env=env, check=False)
    if done.returncode:
        sys.exit(f"`cai {' '.join(args)}` exited {done.returncode}")


def screenshot(page_path: Path, out: Path) -> None:
    """The whole page, `WIDTH` pixels wide, with its first record opened."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium(), args=["--disable-dev-shm-usage"])
        try:
            page = browser.new_page(viewport={"width": WIDTH, "height": 900})
            page.goto(page_path.resolve().as_uri())
            page.wait_for_selector("body[data-ready='1']")
            page.click("#rec-list > li:first-child .rec-head")
            page.wait_for_selector("#rec-list > li:first-child .detail")
            page.screenshot(path=str(out), full_page=True)
        finally:
            browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "report.png", help="the PNG to write")
    parser.add_argument("--run", type=Path, help="the run folder, kept (default: a temporary one named demo)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cai-report-png-") as tmp:
        run = args.run or Path(tmp) / "demo"
        cai(*RUN, "--out", str(run))  # resumes a finished run with no model call
        page = Path(tmp) / "report.html"
        cai("report", str(run), "--out", str(page))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        screenshot(page, args.out)
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
