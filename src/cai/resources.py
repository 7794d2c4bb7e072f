"""Where shipped data lives: `cai/_data/` in a wheel, the repository root in an editable install."""

from __future__ import annotations

from pathlib import Path


def data_dir(kind: str) -> Path:
    """The folder of shipped `prompts` or `constitution` files."""
    here = Path(__file__).resolve().parent
    packaged = here / "_data" / kind
    if packaged.is_dir():
        return packaged
    return here.parents[1] / kind
