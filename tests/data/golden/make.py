"""Record the golden outputs that tests/test_golden.py compares today's code against.

    python tests/data/golden/make.py            # every case, and the old stores
    python tests/data/golden/make.py rbr batch  # only these cases (the old stores come with `plain`)

Run it from anywhere; it records the code of the checkout it is in (its `src/` goes first on the path). Each case
(tests/golden.py `CASES`: plain, rbr, candidates, layers, batch, ray) is run in a temporary folder against a fresh
loopback stub, and its exports are written, normalized, to tests/data/golden/<case>/ (the folder is replaced).
The `plain` case runs on the fixed port `OLD_STORE_PORT` and also leaves three stores in tests/data/golden/old-store/,
which test_golden resumes or reuses on that port: run.sqlite, its finished run as `cai run` left it; failed.sqlite,
the same run with one record failed by an injected 400; calls.sqlite, the shared call cache (--cache) of the same
run. The `ray` case needs ray (pip install 'cai[ray]'); without it, it is left as it is and said so.

Only re-record when a change of the outputs is intended: the golden outputs are what keeps behaviour unchanged.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Any

REPO = Path(__file__).resolve().parents[3]


def main(argv: list[str]) -> int:
    sys.path[:0] = [str(REPO / "src"), str(REPO / "tests")]
    os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), *filter(None, [os.environ.get("PYTHONPATH")])])
    import importlib.util

    import cai
    import golden

    unknown = [n for n in argv if n not in golden.CASES]
    if unknown:
        print(f"unknown case {', '.join(unknown)} (cases: {', '.join(golden.CASES)})", file=sys.stderr)
        return 2
    print(f"recording cai {cai.__version__} from {Path(cai.__file__).parent}", file=sys.stderr)
    for name in argv or list(golden.CASES):
        case = golden.CASES[name]
        if case.ray and importlib.util.find_spec("ray") is None:
            print(f"{name}: skipped, ray is not importable (pip install 'cai[ray]'); left as it was", file=sys.stderr)
            continue
        with tempfile.TemporaryDirectory(prefix=f"golden-{name}-") as tmp:
            record_case(golden, case, Path(tmp))
        print(f"{name}: wrote {golden.GOLDEN / name}", file=sys.stderr)
    return 0


def record_case(golden: ModuleType, case: Any, work: Path) -> None:
    """Run `case` (a tests/golden.py Case) in `work` and write its golden folder (and, for plain, the old stores)."""
    dest = golden.GOLDEN / case.name
    old_store = case.name == "plain"
    with golden.old_store_server(case) if old_store else golden.server(case) as srv:
        run = golden.run_case(case, work, srv)
    if old_store:
        keep(run / "run.sqlite", golden.OLD_STORE)
    shutil.rmtree(dest, ignore_errors=True)
    golden.record(run, work, dest)
    if old_store:
        failed_store(golden, case, work / "failed")
        call_cache(golden, case, work / "cached")


def failed_store(golden: ModuleType, case: Any, work: Path) -> None:
    """The plain case with one record failed (exit 1), its store kept as tests/data/golden/old-store/failed.sqlite."""
    with golden.old_store_server(case) as srv:
        golden.copy_inputs(work)
        golden.fail_one_revision(srv)
        golden.cli("run", work / case.input, *golden.run_args(case, work, srv), "--quiet", code=1)
    store = work / case.name / "run.sqlite"
    keep(store, golden.FAILED_STORE)


def call_cache(golden: ModuleType, case: Any, work: Path) -> None:
    """The plain case with a shared call cache, kept as tests/data/golden/old-store/calls.sqlite."""
    with golden.old_store_server(case) as srv:
        golden.copy_inputs(work)
        golden.cli("run", work / case.input, *golden.run_args(case, work, srv), "--quiet", "--cache",
                   work / "calls.sqlite")
    keep(work / "calls.sqlite", golden.CALL_CACHE)


def keep(store: Path, dest: Path) -> None:
    """Copy a closed run store to `dest`, making sure no write-ahead log holds part of it."""
    wal = store.with_name(store.name + "-wal")
    assert not wal.exists() or wal.stat().st_size == 0, f"{store} left a write-ahead log: the store is not whole"
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(store, dest)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
