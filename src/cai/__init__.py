"""cai: AI-feedback training data (draft → critique → revise → SFT and preference pairs).

    import cai
    r = cai.run("prompts.jsonl", out="runs/x", model="openai:gpt-4o-mini")   # or: await cai.arun(...)
    r.pairs(); r.critiques(); r.principle_stats(); cai.open_run("runs/x").status()

The names below load on first use, so `import cai` (and the `cai` command) stays fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Run", "__version__", "arun", "compare", "estimate", "open_run", "run"]

if TYPE_CHECKING:
    from cai.api import arun, compare, estimate, open_run, run
    from cai.read.run import Run

_LAZY = {"arun": "cai.api", "run": "cai.api", "open_run": "cai.api", "compare": "cai.api", "estimate": "cai.api",
         "Run": "cai.read.run"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'cai' has no attribute {name!r}")
