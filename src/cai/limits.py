"""Bounds on the files a user hands in (constitutions, price tables, rbr weights, votes, label rows), and the
readers that enforce them: a file far beyond any real one is refused with one InputError naming the file (and the
line) instead of taking minutes and gigabytes, or ending in a RecursionError.

- size: each kind of file has its limit in bytes (`CONSTITUTION_BYTES` ...), checked before it is read;
- nesting: YAML and JSON collections at most `MAX_DEPTH` levels deep;
- YAML aliases (`*name`) may stand for at most `MAX_ALIAS_NODES` nodes in all (no "billion laughs"), and never
  for a node that holds the alias (a recursive alias);
- integers at most Python's `sys.get_int_max_str_digits()` digits (4,300 by default).

docs/constitution.md lists them for users.
"""

from __future__ import annotations

import codecs
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from cai.errors import InputError

MiB = 1 << 20
CONSTITUTION_BYTES = 2 * MiB  # the shipped ones are 12 KiB; 2 MiB is some 7,000 principles
PRICES_BYTES = 1 * MiB
WEIGHTS_BYTES = 1 * MiB
VOTES_BYTES = 32 * MiB  # each CSV (a Polis export of 10,000 people voting on 1,000 comments is ~15 MiB)
LABELS_BYTES = 512 * MiB  # rows for `cai label FILE` and `cai judge-eval FILE`
MAX_DEPTH = 100
MAX_ALIAS_NODES = 100_000


def mib(n: int) -> str:
    """`n` bytes as MiB, for messages ("2 MiB")."""
    return f"{n / MiB:g} MiB"


def check_size(path: Path, limit: int, what: str) -> None:
    """InputError naming `path` if the file is over `limit` bytes (a file that cannot be stat'ed passes: its
    reader reports why)."""
    try:
        size = path.stat().st_size
    except OSError:
        return
    if size > limit:
        raise InputError(f"{size:,} bytes, over the {mib(limit)} limit for a {what}", path=str(path))


def read_bytes(path: Path, limit: int, what: str) -> bytes:
    """The bytes of a file of at most `limit` bytes (also if it grows while read); InputError otherwise."""
    check_size(path, limit, what)
    try:
        with path.open("rb") as fh:
            raw = fh.read(limit + 1)
    except OSError as e:
        raise InputError(f"cannot read {what} ({e.strerror or e})", path=str(path)) from None
    if len(raw) > limit:
        raise InputError(f"over the {mib(limit)} limit for a {what}", path=str(path))
    return raw


def decode(raw: bytes, path: str, encoding: str = "utf-8-sig") -> str:
    """`raw` as UTF-8 (`utf-8-sig` drops a leading BOM); InputError naming the line of the first bad byte."""
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as e:
        start = e.start + (len(codecs.BOM_UTF8) if encoding == "utf-8-sig" and raw.startswith(codecs.BOM_UTF8) else 0)
        raise InputError(f"not UTF-8 ({e.reason} at byte {start})", path=path,
                         line=raw.count(b"\n", 0, start) + 1) from None


# -- JSON: json.loads has no hook before it recurses, so a scan of its brackets and numbers comes first ------

_JSON_TOKEN = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"?|[\[{]|[\]}]|-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?', re.S)


def check_json(text: str, path: str) -> None:
    """InputError naming the line where JSON `text` nests deeper than MAX_DEPTH or has an integer longer than
    Python converts; every other problem is left to json.loads."""
    digits = sys.get_int_max_str_digits()
    depth = 0
    for m in _JSON_TOKEN.finditer(text):
        tok = m.group()
        if tok in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                raise InputError(f"nested more than {MAX_DEPTH} levels deep", path=path,
                                 line=text.count("\n", 0, m.start()) + 1)
        elif tok in "]}":
            depth -= 1
        elif digits and len(number := tok.lstrip("-")) > digits and number.isdigit():
            raise InputError(f"an integer of {len(number)} digits (at most {digits})", path=path,
                             line=text.count("\n", 0, m.start()) + 1)


# -- YAML: PyYAML's SafeLoader, bounded where it composes nodes ----------------------------------------------

class _Refused(yaml.MarkedYAMLError):
    """A bound of this module, at a place in the YAML text."""


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader refusing nesting deeper than MAX_DEPTH, aliases standing for more than MAX_ALIAS_NODES nodes
    in all or for a node that holds them, and integers longer than Python converts."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._aliased = 0
        self._sizes: dict[int, tuple[int, int]] = {}  # id(node) → (nodes in it, levels), once composed

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            node = super().compose_node(parent, index)
            if id(node) not in self._sizes:
                raise _Refused(None, None, "a recursive alias (it stands for a node that holds it)", event.start_mark)
            nodes, levels = self._sizes[id(node)]
            self._aliased += nodes
            if self._aliased > MAX_ALIAS_NODES:
                raise _Refused(None, None, f"aliases stand for more than {MAX_ALIAS_NODES:,} nodes in all",
                               event.start_mark)
            if self._depth + levels > MAX_DEPTH:
                raise _Refused(None, None, f"this alias nests more than {MAX_DEPTH} levels deep", event.start_mark)
            return node
        if self._depth >= MAX_DEPTH:
            raise _Refused(None, None, f"nested more than {MAX_DEPTH} levels deep", event.start_mark)
        self._depth += 1
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        children = (node.value if isinstance(node, yaml.SequenceNode) else
                    [x for kv in node.value for x in kv] if isinstance(node, yaml.MappingNode) else [])
        sizes = [self._sizes[id(c)] for c in children]
        self._sizes[id(node)] = (1 + sum(n for n, _ in sizes), 1 + max((lv for _, lv in sizes), default=0))
        return node

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:
        try:
            return super().construct_yaml_int(node)
        except ValueError:
            raise _Refused(None, None, f"an integer of more than {sys.get_int_max_str_digits()} digits",
                           node.start_mark) from None

    yaml_constructors = {**yaml.SafeLoader.yaml_constructors, "tag:yaml.org,2002:int": construct_yaml_int}


def _input_error(e: yaml.YAMLError, path: str) -> InputError:
    mark = getattr(e, "problem_mark", None)
    line = mark.line + 1 if mark is not None else None
    problem = getattr(e, "problem", None) or str(e)
    return InputError(problem if isinstance(e, _Refused) else f"invalid YAML: {problem}", path=path, line=line)


def load_yaml(text: str, path: str) -> Any:
    """The data of one YAML document, read safely and within the bounds; InputError naming path:line."""
    return _bounded(text, path, _BoundedLoader.get_single_data)


def compose_yaml(text: str, path: str) -> yaml.Node | None:
    """The node tree of one YAML document (for lines), within the bounds; InputError naming path:line."""
    return _bounded(text, path, _BoundedLoader.get_single_node)


def _bounded(text: str, path: str, read: Callable[[_BoundedLoader], Any]) -> Any:
    """`read` of a bounded loader over `text`; its YAML errors as one InputError naming path:line."""
    loader = _BoundedLoader(text)
    try:
        return read(loader)
    except yaml.YAMLError as e:
        raise _input_error(e, path) from None
    finally:
        loader.dispose()
