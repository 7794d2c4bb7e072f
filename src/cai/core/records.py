"""Input records: JSONL (`prompt` or `messages`), .txt (a prompt per line), .csv (a `prompt` column).

Files are read as a stream. Every problem is an InputError naming the file and line.
"""

from __future__ import annotations

import csv
import hashlib
import itertools
import json
import sys
from array import array
from bisect import bisect_right
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
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


def _decoded(raw: Iterable[bytes], name: str) -> Iterator[str]:
    """Every line of `raw` (a file's lines as bytes) with its line ending, each decoded as UTF-8 on its own (so a
    bad byte is reported on its own line); a UTF-8 BOM at the start of the file is dropped."""
    for n, line in enumerate(raw, start=1):
        try:
            yield line.decode("utf-8-sig" if n == 1 else "utf-8")
        except UnicodeDecodeError as e:
            raise InputError(f"not UTF-8 ({e.reason} at byte {e.start})", path=name, line=n) from None


def _lines(raw: Iterable[bytes], name: str) -> Iterator[tuple[int, str]]:
    """(line number, text) for every non-blank line (see `_decoded`)."""
    for n, line in enumerate(_decoded(raw, name), start=1):
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
    with Path(path).open("rb") as fh:
        yield from _jsonl(fh, str(path))


def _jsonl(raw: Iterable[bytes], name: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """`iter_jsonl` over a file's lines as bytes."""
    for n, line in _lines(raw, name):
        row = _loads(line, name, n)
        if not isinstance(row, dict):
            raise InputError(f"each line must be a JSON object, not {type(row).__name__}", path=name, line=n)
        _check_text(row, (name, n))
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


def _csv_rows(raw: Iterable[bytes], name: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line a row ends on, row dict) for every non-blank CSV row. Quoting is strict: a quoted field may span
    lines, but a quote still open at the end of the file, or text after a closing quote, is an error naming
    the line the field's row began on; so is a row with more or fewer cells than the header."""
    reader = csv.reader(_decoded(raw, name), strict=True)
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


def _rows(path: Path, raw: Iterable[bytes]) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, row dict) for every non-blank row of `raw`, the lines of `path`."""
    suffix = path.suffix.lower()
    if suffix == ".txt":
        for n, line in _lines(raw, str(path)):
            yield n, {"prompt": line.rstrip("\r\n")}
    elif suffix == ".csv":
        yield from _csv_rows(raw, str(path))
    else:
        yield from _jsonl(raw, str(path))


def _checked(path: str | Path) -> Path:
    """`path`, if it names an input file cai reads; InputError otherwise."""
    path = Path(path)
    if path.suffix.lower() not in (".jsonl", ".json", ".txt", ".csv"):
        raise InputError("input must be .jsonl, .txt or .csv", path=str(path))
    if not path.is_file():
        raise InputError("input file not found", path=str(path))
    return path


def iter_records(path: str | Path, limit: int | None = None) -> Iterator[InputRecord]:
    """Stream validated records; duplicate ids are checked (only ids are kept in memory)."""
    path = _checked(path)
    with path.open("rb") as fh:
        for _, rec in _numbered(path, fh, limit):
            yield rec


def _numbered(path: Path, raw: Iterable[bytes], limit: int | None,
              unique: bool = True) -> Iterator[tuple[int, InputRecord]]:
    """(line number, record) for the first `limit` records of `raw`, the lines of `path` (for CSV, the line a row
    ends on). `unique`: refuse an id seen before (keeps the ids)."""
    seen: dict[str, int] = {}
    idx = 0
    for line, row in _rows(path, raw):
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
        if unique:
            seen[rid] = line
        messages = _messages(row, (str(path), line))
        extra = {k: v for k, v in row.items() if k not in ("id", "prompt", "messages")}
        yield line, InputRecord(idx=idx, id=rid, messages=messages, extra=extra)
        idx += 1


def _line_hash(raw: bytes) -> bytes:
    """An 8-byte hash of a line's bytes without its final newline (so a last line that later gets its newline,
    and rows after it, is unchanged)."""
    return hashlib.blake2b(raw[:-1] if raw.endswith(b"\n") else raw, digest_size=8).digest()


@dataclass(frozen=True)
class InputScan:
    """What one pass over an input file found: its records (the first `--limit`), its bytes' sha256, size and
    line count (a last line without a newline counts), each line's 8-byte hash (`hashes`, concatenated) and the
    line each record is on (`ends`; for CSV, the line a row ends on), and the file's `path`."""

    records: int
    sha256: str
    bytes: int
    lines: int
    hashes: bytes = b""
    ends: array = field(default_factory=lambda: array("q"))
    path: str = ""

    def line_hash(self, n: int) -> bytes | None:
        """Line `n`'s hash (from 1), None past the last line."""
        return self.hashes[8 * (n - 1):8 * n] if 0 < n <= self.lines else None

    def line_hashes(self, after: int = 0) -> Iterator[tuple[int, bytes]]:
        """(line number, hash) for every line after line `after`."""
        return ((n, self.hashes[8 * (n - 1):8 * n]) for n in range(after + 1, self.lines + 1))

    def records_after(self, line: int) -> int:
        """How many of the records are on a line after `line`."""
        return len(self.ends) - bisect_right(self.ends, line)


class _Tap:
    """A file's lines as bytes, hashed as they are read: the sha256 and size of the bytes, each line's hash."""

    def __init__(self, raw: Iterable[bytes]) -> None:
        self.raw, self.sha256, self.size, self.hashes = raw, hashlib.sha256(), 0, bytearray()

    def __iter__(self) -> Iterator[bytes]:
        for line in self.raw:
            self.sha256.update(line)
            self.size += len(line)
            self.hashes += _line_hash(line)
            yield line


def scan_input(path: str | Path, limit: int | None = None) -> InputScan:
    """The one streaming pass over the input before any model call: validates its records and hashes its bytes
    and lines together; a file with no prompts (empty, or only blank lines) is an InputError."""
    path = _checked(path)
    ends = array("q")
    with path.open("rb") as fh:
        tap = _Tap(fh)
        lines = iter(tap)
        ends.extend(n for n, _ in _numbered(path, lines, limit))
        for _ in lines:  # the lines past the last record (`limit`) are hashed too
            pass
    if not ends:
        raise InputError("no prompts", path=str(path))
    return InputScan(len(ends), tap.sha256.hexdigest(), tap.size, len(tap.hashes) // 8, bytes(tap.hashes), ends,
                      str(path))


def scanned_records(scan: InputScan) -> Iterator[InputRecord]:
    """The records `scan` found in its file, read again for the pipeline: each line is checked against its hash
    from the scan rather than validated again; InputError naming the first line that changed since the scan
    (rows appended since are not read)."""
    path = Path(scan.path)

    def unchanged(raw: Iterable[bytes]) -> Iterator[bytes]:
        for n, line in enumerate(raw, start=1):
            if _line_hash(line) != scan.line_hash(n):
                raise InputError("the file changed while cai read it; run the command again", path=str(path), line=n)
            yield line

    with path.open("rb") as fh:
        for _, rec in itertools.islice(_numbered(path, unchanged(fh), None, unique=False), scan.records):
            yield rec  # islice reads no row past the last record
