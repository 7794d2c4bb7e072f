"""Rows for `cai label FILE` and `cai judge-eval FILE`, read and checked in full before any model call.

    label:      {"id"?, "prompt": str | [messages], "responses": [str | [messages], ...]}   (two or more)
    judge-eval: {"id"?, "prompt": str | [messages], "chosen": str | [messages], "rejected": ...,
                 "section"? , "tags"?}

A response given as messages is its last assistant turn. Every problem is an InputError naming the line; a file
over `cai.limits.LABELS_BYTES` is refused before any row is read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cai.core.records import iter_jsonl, message_list
from cai.errors import InputError
from cai.limits import LABELS_BYTES, check_size


def response_text(value: Any, field: str, path: str, line: int) -> str:
    """A response: a non-empty string, or the last assistant turn of a list of messages."""
    if isinstance(value, list):
        turns = [m["content"] for m in message_list(value, path, line, field) if m["role"] == "assistant"]
        value = turns[-1] if turns else None
    if not isinstance(value, str) or not value.strip():
        raise InputError(f"`{field}` must be a non-empty string or messages with an assistant turn", path=path,
                         line=line)
    return value


def _read(path: Path, parse: Any) -> list[dict[str, Any]]:
    if not path.is_file():
        raise InputError("file not found", path=str(path))
    check_size(path, LABELS_BYTES, "labels file")
    rows = []
    for n, obj in iter_jsonl(path):
        if not isinstance(obj, dict):
            raise InputError("each line must be a JSON object", path=str(path), line=n)
        row = parse(obj, str(path), n)
        prompt = message_list(obj.get("prompt"), str(path), n, "prompt")
        row.update(id=str(obj.get("id", f"row{n}")), prompt=prompt, line=n)
        rows.append(row)
    if not rows:
        raise InputError("no rows", path=str(path))
    return rows


def _candidates(obj: dict[str, Any], path: str, line: int) -> dict[str, Any]:
    responses = obj.get("responses")
    if not isinstance(responses, list) or len(responses) < 2:
        raise InputError("`responses` must list two or more responses", path=path, line=line)
    texts = [response_text(r, f"responses[{i}]", path, line) for i, r in enumerate(responses)]
    return {"responses": texts}


def _pair(obj: dict[str, Any], path: str, line: int) -> dict[str, Any]:
    chosen = response_text(obj.get("chosen"), "chosen", path, line)
    rejected = response_text(obj.get("rejected"), "rejected", path, line)
    tags = obj.get("tags") or []
    if obj.get("section") is not None:
        tags = [str(obj["section"]), *tags]
    return {"chosen": chosen, "rejected": rejected, "section": str(obj.get("section") or ""), "tags": tags}


def read_candidates(path: Path) -> list[dict[str, Any]]:
    """`cai label FILE` rows: id, prompt (messages), responses (texts)."""
    return _read(path, _candidates)


def read_pairs(path: Path) -> list[dict[str, Any]]:
    """`cai judge-eval FILE` rows: id, prompt (messages), chosen, rejected, section, tags."""
    return _read(path, _pair)
