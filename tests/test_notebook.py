"""examples/explore_critiques.ipynb runs top to bottom on the embedded model (nbclient, a real kernel)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from helpers import REPO

nbformat = pytest.importorskip("nbformat", reason="the dev extra installs nbformat/nbclient/ipykernel")
nbclient = pytest.importorskip("nbclient", reason="the dev extra installs nbformat/nbclient/ipykernel")
pytest.importorskip("llama_cpp", reason="the notebook runs the embedded model (the local extra)")

NOTEBOOK = REPO / "examples" / "explore_critiques.ipynb"


def test_the_committed_notebook_has_no_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)


def test_the_notebook_executes_without_errors(tmp_path: Path):
    shutil.copy(NOTEBOOK, tmp_path / NOTEBOOK.name)
    nb = nbformat.read(tmp_path / NOTEBOOK.name, as_version=4)
    # The whole notebook: any cell error raises CellExecutionError (the timeout is a hang guard, not a bound).
    nbclient.NotebookClient(nb, timeout=1800, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert sum("image/png" in o.get("data", {}) for o in outputs) == 3  # the three plots
    diffs = [o for o in outputs if "<i>draft</i>" in o.get("data", {}).get("text/html", "")]
    assert len(diffs) == 2, "the two word diffs render as HTML"
    assert (tmp_path / "runs" / "nb-explore" / "pairs.jsonl").exists()
    assert (tmp_path / "runs" / "nb-calls.sqlite").exists()
