"""Rows to grade, read from a JSONL file or from a cai run's store; graded rows read back and written out.

A row to grade (dict shape used across `cai.rbr`):

    {"id": str, "prompt": [messages], "response": str, "response_type": str | None,
     "labels": {proposition id: bool} | None,   # human labels (gold files' `propositions`)
     "source": "row" | "draft" | "final", "expected": "comply" | "refuse" | None}

Input JSONL rows: `prompt` (string or chat list), `response` (string) or `completion` (string or
chat list; the last assistant turn is used), optional `id`, `response_type`, `propositions`
(name → bool human labels), `expected`. A run folder gives two rows per finished record: its draft
and its final response (the last revision).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cai.core.records import iter_jsonl, message_list
from cai.errors import InputError
from cai.read.export import writing
from cai.store import Store
from cai.store.steps import draft_and_final

if TYPE_CHECKING:
    from cai.constitution import Constitution


def _response(row: dict[str, Any], path: str, line: int) -> str:
    value = row.get("response", row.get("completion"))
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value:
        msgs = message_list(value, path, line, "completion")
        turns = [m["content"] for m in msgs if m["role"] == "assistant"]
        if turns:
            return turns[-1]
    raise InputError("each row needs `response` (string) or `completion` (string or assistant messages)",
                     path=path, line=line)


def parse_row(row: Any, path: str, line: int) -> dict[str, Any]:
    """One input row in the shape above; InputError naming file and line when it is malformed."""
    if not isinstance(row, dict):
        raise InputError("each line must be a JSON object", path=path, line=line)
    if "prompt" not in row and "messages" not in row:
        raise InputError("each row needs `prompt` (string or messages)", path=path, line=line)
    prompt = message_list(row.get("prompt", row.get("messages")), path, line, "prompt")
    rtype = row.get("response_type")
    if rtype is not None and not isinstance(rtype, str):
        raise InputError("`response_type` must be a string", path=path, line=line)
    labels = row.get("propositions")
    if labels is not None and (not isinstance(labels, dict)
                               or not all(isinstance(v, bool) for v in labels.values())):
        raise InputError("`propositions` must map proposition names to true/false", path=path, line=line)
    expected = row.get("expected")
    if expected is not None and expected not in ("comply", "refuse"):
        raise InputError("`expected` must be comply or refuse", path=path, line=line)
    return {"id": str(row.get("id", f"line-{line}")), "prompt": prompt, "response": _response(row, path, line),
            "response_type": rtype, "labels": labels, "source": "row", "expected": expected}


def check_names(row: dict[str, Any], const: Constitution, path: str, line: int) -> None:
    """InputError naming the file and line if the row's response type or a labelled proposition is not the
    constitution's (caught before any call, not after the grader has been paid)."""
    rtype = row.get("response_type")
    if rtype is not None and rtype not in const.response_types:
        raise InputError(f"unknown response type {rtype!r} (constitution {const.name} has: "
                         f"{', '.join(const.response_types)})", path=path, line=line)
    known = {p.id for p in const.propositions}
    unknown = sorted(set(row.get("labels") or {}) - known)
    if unknown:
        raise InputError(f"unknown proposition {unknown[0]!r} in `propositions` (constitution {const.name} has: "
                         f"{', '.join(sorted(known))})", path=path, line=line)


def read_rows(path: Path, limit: int | None = None, const: Constitution | None = None) -> list[dict[str, Any]]:
    """Rows to grade from a JSONL file (validated in full before any model call; with `const`, their response
    types and labelled propositions too)."""
    if not path.is_file():
        raise InputError("file not found", path=str(path))
    rows = []
    for n, obj in iter_jsonl(path):
        rows.append(parse_row(obj, str(path), n))
        if const is not None:
            check_names(rows[-1], const, str(path), n)
    if not rows:
        raise InputError("no rows", path=str(path))
    return rows[:limit] if limit else rows


def run_rows(run_dir: Path, limit: int | None = None) -> list[dict[str, Any]]:
    """Draft and final response of each finished record of a cai run (read-only)."""
    store = Store.open_run(run_dir, readonly=True)
    rows: list[dict[str, Any]] = []
    try:
        for rec in store.iter_records():
            if rec.status != "done":
                continue
            if limit and len({r["id"] for r in rows}) >= limit:
                break
            draft, final = draft_and_final(rec.steps)
            if draft is None:
                continue
            extra = rec.extra or {}
            base = {"id": rec.id, "prompt": rec.messages, "response_type": extra.get("response_type"),
                    "labels": None, "expected": extra.get("expected")}
            rows.append({**base, "response": draft, "source": "draft"})
            rows.append({**base, "response": final, "source": "final"})
    finally:
        store.close()
    return rows


def read_input(target: Path, limit: int | None = None, const: Constitution | None = None) -> list[dict[str, Any]]:
    """Rows from a JSONL file (checked against `const`, see `read_rows`) or a run folder."""
    if target.is_dir():
        return run_rows(target, limit)
    return read_rows(target, limit, const)


def read_graded(path: Path) -> list[dict[str, Any]]:
    """Graded rows as written by `cai rbr grade` / `cai rbr eval --output`."""
    if not path.is_file():
        raise InputError("file not found", path=str(path))
    out = []
    for n, obj in iter_jsonl(path):
        if not isinstance(obj, dict) or not isinstance(obj.get("propositions"), dict) \
                or not isinstance(obj.get("response_type"), str):
            raise InputError("not a graded row (needs `response_type` and `propositions` with p_yes)",
                             path=str(path), line=n)
        for pid, v in obj["propositions"].items():
            if not isinstance(v, dict) or not isinstance(v.get("p_yes"), (int, float)):
                raise InputError(f"proposition {pid!r} needs a numeric p_yes", path=str(path), line=n)
        obj["_line"] = n
        out.append(obj)
    if not out:
        raise InputError("no graded rows", path=str(path))
    return out


def write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    """Write atomically (a temp file in the same folder, then rename); OutputError naming `path` if it can't."""
    with writing(path, "rows"):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                for r in rows:
                    f.write(json.dumps(r, ensure_ascii=False) + "\n")
            os.replace(tmp, path)
        except BaseException:  # Ctrl-C or SIGTERM mid-write included: leave no temp file behind
            Path(tmp).unlink(missing_ok=True)
            raise
