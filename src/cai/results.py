"""Presentation helpers over a run's rows (`cai.rows`): `prompt_text` (the prompt a person reads) and `frame`
(rows as a DataFrame). Nothing here reads or writes files.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd


def prompt_text(messages: list[dict[str, str]]) -> str:
    """The last user turn's text (what a person reads as "the prompt")."""
    return next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")


def frame(rows: list[dict[str, Any]], columns: list[str] | None) -> pd.DataFrame:
    """`rows` as a DataFrame (with `columns`, in that order, also when empty). pandas, which loads pyarrow
    (~80 MB), is imported on the first table asked for, not by every `cai run` that only gets a `Run` back."""
    import pandas as pd

    return pd.DataFrame(rows, columns=columns)
