"""Prompt templates and few-shot examples, read from the shipped `prompts/` folder."""

from __future__ import annotations

import functools
import string
from pathlib import Path
from typing import Any

from cai.limits import load_yaml
from cai.resources import data_dir


@functools.cache
def template(name: str) -> string.Template:
    return string.Template((data_dir("prompts") / f"{name}.txt").read_text(encoding="utf-8"))


def render(name: str, **values: Any) -> str:
    """Fill `prompts/<name>.txt`; every $placeholder must be given."""
    return template(name).substitute(**values).strip()


def fewshot_path() -> Path:
    """The file of worked examples shown to the critic and the reviser."""
    return data_dir("prompts") / "fewshot.yaml"


@functools.cache
def fewshot() -> tuple[dict[str, Any], ...]:
    path = fewshot_path()
    if not path.is_file():
        return ()
    data = load_yaml(path.read_text(encoding="utf-8"), str(path)) or {}
    return tuple(data.get("examples", []))
