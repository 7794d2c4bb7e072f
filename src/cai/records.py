"""Input records: JSONL (`prompt` or `messages`), .txt (a prompt per line), .csv (a `prompt` column).

Files are read as a stream. Every problem is an InputError naming the file and line.
"""

from __future__ import annotations

import csv
import hashlib
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from cai.errors import InputError
from cai.limits import MAX_DEPTH  # how deep lists and objects may nest in a row (a chat row needs 3)

ROLES = ("system", "developer", "user", "assistant")


class InputRecord(BaseModel):
    """One prompt. `extra` keeps other input fields (e.g. `expected`, `response_type`)."""

    idx: int
    id: str
    messages: list[dict[str, str]]
    extra: dict[str, Any] = {}


def _messages(row: dict[str, Any], where: tuple[str, int]) -> list[dict[str, str]]:
    path, line = where
    if "messages" in row:
        msgs = row["messages"]
        if not isinstance(msgs, list) or not msgs:
            raise InputError("`messages` must be a non-empty list", path=path, line=line)
        out = []
        for i, m in enumerate(msgs):
            if not isinstance(m, dict) or not isinstance(m.get("content"), str) or m.get("role") not in ROLES:
                raise InputError(f"messages[{i}] must be {{'role': system|developer|user|assistant, "
                                 "'content': string}", path=path, line=line)
            out.append({"role": m["role"], "content": m["content"]})
        if out[-1]["role"] != "user":
            raise InputError("the last message must have role 'user'", path=path, line=line)
        if not out[-1]["content"].strip():
            raise InputError("empty prompt", path=path, line=line)
        return out
    if "prompt" not in row:
        raise InputError("row needs a `prompt` string or a `messages` list", path=path, line=line)
    prompt = row["prompt"]
    if not isinstance(prompt, str):
        raise InputError(f"`prompt` must be a string, not {type(prompt).__name__}", path=path, line=line)
    if not prompt.strip():
        raise InputError("empty prompt", path=path, line=line)
    return [{"role": "user", "content": prompt}]


def message_list(value: Any, path: str, line: int, field: str) -> list[dict[str, str]]:
    """`field` of a row as chat messages: a non-empty string (one user turn) or a non-empty list of
    {role, content} messages, any roles in any order; InputError naming the file and line otherwise."""
    if isinstance(value, str):
        if not value.strip():
            raise InputError(f"`{field}` is empty", path=path, line=line)
        return [{"role": "user", "content": value}]
    if not isinstance(value, list) or not value:
        raise InputError(f"`{field}` must be a string or a non-empty list of messages", path=path, line=line)
    out = []
    for m in value:
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise InputError(f"`{field}` messages need a role ({'/'.join(ROLES)}) and string content",
                             path=path, line=line)
        out.append({"role": m["role"], "content": m["content"]})
    return out


def _decoded(path: Path) -> Iterator[str]:
    """Every line of the file with its line ending, each decoded as UTF-8 on its own (so a bad byte is
    reported on its own line); a UTF-8 BOM at the start of the file is dropped."""
    with path.open("rb") as fh:
        for n, raw in enumerate(fh, start=1):
            try:
                yield raw.decode("utf-8-sig" if n == 1 else "utf-8")
            except UnicodeDecodeError as e:
                raise InputError(f"not UTF-8 ({e.reason} at byte {e.start})", path=str(path), line=n) from None


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text) for every non-blank line (see `_decoded`)."""
    for n, line in enumerate(_decoded(path), start=1):
        if line.strip():
            yield n, line


def _loads(line: str, path: str, n: int) -> Any:
    """One line's JSON value, nested at most MAX_DEPTH deep; InputError naming the line otherwise, also for an
    integer longer than Python converts (`sys.get_int_max_str_digits()`)."""
    too_deep = InputError(f"JSON nested more than {MAX_DEPTH} levels deep", path=path, line=n)
    try:
        value = json.loads(line)
    except json.JSONDecodeError as e:
        raise InputError(f"malformed JSON ({e.msg}, column {e.colno})", path=path, line=n) from None
    except RecursionError:  # deeper than the decoder goes
        raise too_deep from None
    except ValueError:  # an integer of more digits than int() takes
        limit = sys.get_int_max_str_digits()
        raise InputError(f"a number has more than {limit} digits", path=path, line=n) from None
    if line.count("[") + line.count("{") > MAX_DEPTH and _depth(value) > MAX_DEPTH:
        raise too_deep
    return value


def _depth(value: Any) -> int:
    """How many levels of lists and objects `value` nests (a scalar: 0), without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is not None:
            deepest = max(deepest, level)
            stack.extend((c, level + 1) for c in children if isinstance(c, (dict, list)))
    return deepest


def iter_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, JSON object) for every non-blank line of a JSONL file; InputError naming the line,
    also for text no UTF-8 file or store can hold (a lone surrogate escape such as `"\\ud800"`)."""
    for n, line in _lines(path):
        row = _loads(line, str(path), n)
        if not isinstance(row, dict):
            raise InputError(f"each line must be a JSON object, not {type(row).__name__}", path=str(path), line=n)
        _check_text(row, (str(path), n))
        yield n, row


def _unencodable(value: Any, field: str = "") -> str | None:
    """Where in `value` a string cannot be encoded as UTF-8 (a lone surrogate, e.g. from a JSON `\\ud800`
    escape): a field path such as `messages[0].content`, or None if every string is fine."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return field
        return None
    if isinstance(value, dict):
        for k, v in value.items():
            if isinstance(k, str) and _unencodable(k) is not None:
                return f"a key of {field}" if field else "a field name"
            bad = _unencodable(v, f"{field}.{k}" if field else str(k))
            if bad is not None:
                return bad
    elif isinstance(value, list):
        for i, v in enumerate(value):
            bad = _unencodable(v, f"{field}[{i}]")
            if bad is not None:
                return bad
    return None


def _check_text(row: dict[str, Any], where: tuple[str, int]) -> None:
    """InputError naming the field if any string in the row (keys, nested values) is not valid Unicode."""
    try:
        json.dumps(row, ensure_ascii=False).encode("utf-8")  # one C-speed pass over the whole row
        return
    except (UnicodeEncodeError, TypeError, ValueError):
        pass
    bad = _unencodable(row)
    if bad is not None:
        raise InputError(f"text is not valid Unicode (lone surrogate in {bad})", path=where[0], line=where[1])


def _csv_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line a row ends on, row dict) for every non-blank CSV row. Quoting is strict: a quoted field may span
    lines, but a quote still open at the end of the file, or text after a closing quote, is an error naming
    the line the field's row began on; so is a row with more or fewer cells than the header."""
    name = str(path)
    reader = csv.reader(_decoded(path), strict=True)
    header: list[str] | None = None
    start = 1
    while True:
        try:
            cells = next(reader, None)
        except csv.Error as e:
            raise InputError(_csv_problem(e, start, reader.line_num), path=name, line=start) from None
        if cells is None:
            return
        row_start, start = start, reader.line_num + 1
        if not cells:  # a blank line
            continue
        if header is None:
            if "prompt" not in cells:
                raise InputError("CSV needs a `prompt` column", path=name, line=row_start)
            header = cells
        elif len(cells) != len(header):
            raise InputError(f"row has {len(cells)} cells but the header has {len(header)} "
                             f"(a comma not in quotes?)", path=name, line=row_start)
        else:
            yield reader.line_num, dict(zip(header, cells))


def _csv_problem(e: csv.Error, start: int, end: int) -> str:
    """What a csv.Error in the row that began on line `start` and was read up to line `end` means."""
    if "unexpected end of data" in str(e):
        return "a quote opened in this row is never closed (the field would run to the end of the file)"
    if end > start:
        return f"bad CSV: {e} on line {end}, in a quoted field that began in this row (is a quote not closed?)"
    return f"bad CSV: {e}"


def _rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, row dict) for every non-blank row."""
    suffix = path.suffix.lower()
    if suffix == ".txt":
        for n, line in _lines(path):
            yield n, {"prompt": line.rstrip("\r\n")}
    elif suffix == ".csv":
        yield from _csv_rows(path)
    else:
        yield from iter_jsonl(path)


def iter_records(path: str | Path, limit: int | None = None) -> Iterator[InputRecord]:
    """Stream validated records; duplicate ids are checked (only ids are kept in memory)."""
    for _, rec in _numbered(path, limit):
        yield rec


def _numbered(path: str | Path, limit: int | None) -> Iterator[tuple[int, InputRecord]]:
    """(line number, record) for the first `limit` records (for CSV, the line a row ends on)."""
    path = Path(path)
    if path.suffix.lower() not in (".jsonl", ".json", ".txt", ".csv"):
        raise InputError("input must be .jsonl, .txt or .csv", path=str(path))
    if not path.is_file():
        raise InputError("input file not found", path=str(path))
    seen: dict[str, int] = {}
    idx = 0
    for line, row in _rows(path):
        if limit is not None and idx >= limit:
            return
        rid = row.get("id")
        if rid is None or rid == "":
            rid = f"line-{line}"
        elif not isinstance(rid, (str, int)) or isinstance(rid, bool):
            raise InputError("`id` must be a string or an integer", path=str(path), line=line)
        rid = str(rid)
        if rid in seen:
            raise InputError(f"duplicate id {rid!r} (first on line {seen[rid]})", path=str(path), line=line)
        seen[rid] = line
        messages = _messages(row, (str(path), line))
        extra = {k: v for k, v in row.items() if k not in ("id", "prompt", "messages")}
        yield line, InputRecord(idx=idx, id=rid, messages=messages, extra=extra)
        idx += 1


@dataclass(frozen=True)
class InputScan:
    """What one pass over an input file found: its records (the first `--limit`), and its bytes' sha256,
    size and line count (a last line without a newline counts)."""

    records: int
    sha256: str
    bytes: int
    lines: int


def scan_input(path: str | Path, limit: int | None = None) -> InputScan:
    """One full streaming pass before any model call; a file with no prompts (empty, or only blank lines)
    is an InputError."""
    count = sum(1 for _ in iter_records(path, limit))
    if count == 0:
        raise InputError("no prompts", path=str(path))
    h, size, newlines, last = hashlib.sha256(), 0, 0, b"\n"
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
            size, newlines, last = size + len(chunk), newlines + chunk.count(b"\n"), chunk[-1:]
    return InputScan(count, h.hexdigest(), size, newlines + (last != b"\n"))


def validate_input(path: str | Path, limit: int | None = None) -> tuple[int, str]:
    """`scan_input` as (record count, sha256 of the file's bytes)."""
    scan = scan_input(path, limit)
    return scan.records, scan.sha256


# -- a growing input: rows may be appended between invocations of a run, never changed ------------------
def line_hashes(path: str | Path, size: int | None = None, sha256: str | None = None) -> Iterator[bytes]:
    """An 8-byte hash of each line of the file's first `size` bytes (all of them by default), in order, from its
    bytes without the final newline (so a last line that later gets its newline, and rows after it, is
    unchanged). With `sha256`: InputError at the end if those bytes do not hash to it (the file changed
    since it was validated)."""
    whole, left = hashlib.sha256(), -1 if size is None else size
    with Path(path).open("rb") as fh:
        while left and (raw := fh.readline(left)):
            whole.update(raw)
            left -= len(raw) if left > 0 else 0
            yield hashlib.blake2b(raw[:-1] if raw.endswith(b"\n") else raw, digest_size=8).digest()
    if sha256 is not None and (left > 0 or whole.hexdigest() != sha256):
        raise InputError("the file changed while cai read it; run the command again", path=str(path))


def extends(path: str | Path, size: int, sha256: str) -> bool:
    """True if the file's first `size` bytes hash to `sha256` and end a line (they end with a newline, or
    the next byte is one, or there is none): the file is that one with lines appended, or that one."""
    h, left, last = hashlib.sha256(), size, b"\n"
    with Path(path).open("rb") as fh:
        while left:
            chunk = fh.read(min(left, 1 << 16))
            if not chunk:
                return False  # shorter than it was
            h.update(chunk)
            left, last = left - len(chunk), chunk[-1:]
        after = fh.read(1)
    return h.hexdigest() == sha256 and (last == b"\n" or after in (b"", b"\n"))


def records_after(path: str | Path, limit: int | None, line: int) -> int:
    """How many of the first `limit` records are on a line after `line` (a CSV row: ends on one)."""
    return sum(1 for n, _ in _numbered(path, limit) if n > line)
