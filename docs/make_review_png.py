"""Make docs/review_page.png: the review page (`cai review serve`) on the small demo run of docs/make_report_png.py
(the embedded SmolLM2-135M, AI labels included), on its first record with one critique agreed with, as the
system's chromium renders it (driven by playwright). Offline. The decision is made on a copy of the run.

    python docs/make_review_png.py                  # -> docs/review_page.png
    python docs/make_review_png.py --out shot.png   # anywhere else
    python docs/make_review_png.py --run runs/demo  # keep the run there (a finished one is reused, no model call)

Needs the `review` extra (Starlette, uvicorn), playwright (the `dev` extra) and a chromium binary (`apt-get install
chromium`, or CAI_CHROMIUM=/path/to/chrome).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from make_report_png import ROOT, RUN, WIDTH, cai, chromium


def screenshot(url: str, out: Path) -> None:
    """The page at `url`, `WIDTH` pixels wide, after agreeing with the first critique."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium(), args=["--disable-dev-shm-usage"])
        try:
            page = browser.new_page(viewport={"width": WIDTH, "height": 900})
            page.goto(url)
            page.wait_for_selector("body[data-ready='1']")
            page.keyboard.press("a")
            page.wait_for_selector(".target[data-target='0'][data-decision='agree']")
            page.screenshot(path=str(out), full_page=True)
        finally:
            browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "review_page.png", help="the PNG to write")
    parser.add_argument("--run", type=Path, help="the run folder, kept (default: a temporary one named demo)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cai-review-png-") as tmp:
        run = args.run or Path(tmp) / "demo"
        cai(*RUN, "--out", str(run))  # resumes a finished run with no model call
        copy = Path(shutil.copytree(run, Path(tmp) / "reviewed", ignore=shutil.ignore_patterns("reviews.sqlite*")))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"),
                                                                          os.environ.get("PYTHONPATH")]))}
        server = subprocess.Popen([sys.executable, "-m", "cai", "review", "serve", str(copy), "--no-browser",
                                   "--reviewer", "ann"], stdout=subprocess.PIPE, text=True, env=env)
        try:
            assert server.stdout is not None
            url = server.stdout.readline().strip()
            if not url.startswith("http"):
                sys.exit("`cai review serve` did not start")
            args.out.parent.mkdir(parents=True, exist_ok=True)
            screenshot(url, args.out)
        finally:
            server.send_signal(signal.SIGINT)
            server.wait()
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
