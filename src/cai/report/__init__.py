"""`cai report`: one self-contained HTML page about a run (overview, plots, every record with its critiques
and word diffs), readable offline: styles, script, plots (inline SVG) and data are all inside the file.

    from cai.report import write_report
    write_report("runs/demo")            # -> runs/demo/report.html

The run is read read-only (a committed snapshot), so a report can be made while the run is being written.
Needs matplotlib (`pip install 'cai[report]'`), imported only when a report is made.
"""

from __future__ import annotations

import os
from pathlib import Path

from cai.errors import InputError
from cai.read.export import write_file, writing
from cai.read.run import Run
from cai.report.data import gather
from cai.report.page import render
from cai.report.plots import make_plots

__all__ = ["write_report", "render_report", "REPORT_NAME"]

REPORT_NAME = "report.html"


def _matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise InputError("cai report needs matplotlib: pip install 'cai[report]'") from None


def render_report(run: Run | str | os.PathLike[str]) -> str:
    """The report page of `run` (a `Run` or a run folder) as HTML text. InputError if it is not a run."""
    _matplotlib()
    run = run if isinstance(run, Run) else Run(run)
    data = gather(run)
    return render(data, make_plots(data))


def write_report(run_dir: Run | str | os.PathLike[str], out: str | os.PathLike[str] | None = None) -> Path:
    """Write the report of a run folder to `out` (default `<run>/report.html`) and return its path.

    InputError if `run_dir` is not a cai run (or matplotlib is missing); OutputError if `out` cannot be
    written. The file is written to a temp file next to `out` and renamed, so a reader never sees half a page."""
    run = run_dir if isinstance(run_dir, Run) else Run(run_dir)
    target = Path(out) if out is not None else run.path / REPORT_NAME
    page = render_report(run).encode("utf-8", errors="replace")
    with writing(target, "report"):
        target.parent.mkdir(parents=True, exist_ok=True)
    write_file(target, page, "report")
    return target
