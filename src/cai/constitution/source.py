"""Reading one constitution file: where it is, its YAML, its schema, duplicate keys and ids (each problem an
InputError naming the file and line), and its content hash."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from cai.constitution.model import SECTIONS, LayerFile
from cai.errors import InputError
from cai.limits import CONSTITUTION_BYTES, compose_yaml, decode, load_yaml, read_bytes
from cai.resources import data_dir

SINGULAR = {"objectives": "objective", "rules": "rule", "defaults": "default", "principles": "principle",
            "comparisons": "comparison", "propositions": "proposition"}


def builtin_names() -> list[str]:
    return sorted(p.stem for p in data_dir("constitution").glob("*.yaml"))


def resolve(name_or_path: str, base: Path | None = None) -> Path:
    """A path to a YAML file (relative to `base`, the folder of the file that names it, if given), or the name
    of a shipped constitution."""
    p = Path(name_or_path)
    if base is not None and not p.is_absolute() and (base / p).exists():
        p = base / p
    if p.suffix in (".yaml", ".yml") or p.exists():
        if not p.is_file():
            raise InputError(f"constitution file not found: {name_or_path}")
        return p
    shipped = data_dir("constitution") / f"{name_or_path}.yaml"
    if shipped.is_file():
        return shipped
    raise InputError(f"unknown constitution {name_or_path!r} (shipped: {', '.join(builtin_names())})")


def _line_of(node: yaml.Node | None, loc: tuple[Any, ...]) -> int | None:
    """1-based line of the YAML node at pydantic error location `loc`."""
    line = node.start_mark.line + 1 if node is not None else None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            nxt = next((v for k, v in node.value if k.value == part), None)
            if nxt is None:
                key = next((k for k, _ in node.value if k.value == part), None)
                return key.start_mark.line + 1 if key is not None else line
            node = nxt
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
        else:
            break
        line = node.start_mark.line + 1
    return line


@dataclass
class Source:
    """One file as read: its layer (None if it cannot be built), YAML node (for lines), hash and problems."""

    path: Path
    layer: LayerFile | None
    node: yaml.Node | None
    sha256: str
    problems: list[InputError]

    def line(self, *loc: Any) -> int | None:
        return _line_of(self.node, loc)

    def error(self, msg: str, *loc: Any) -> InputError:
        return InputError(msg, path=str(self.path), line=self.line(*loc))


def read(path: Path) -> Source:
    """The layer in a file and every problem found in the file alone."""
    where = str(path)
    try:
        raw = read_bytes(path, CONSTITUTION_BYTES, "constitution file")
        text = decode(raw, where, "utf-8")
        data = load_yaml(text, where)
        node = compose_yaml(text, where)
    except InputError as e:
        return Source(path, None, None, "", [e])
    if not isinstance(data, dict):
        return Source(path, None, None, "", [InputError("a constitution must be a YAML mapping", path=where,
                                                        line=1)])
    problems = list(_duplicate_keys(node, where))
    data.setdefault("name", path.stem)
    sha = content_sha256(raw, text, node)
    layer = None
    for attempt in range(3):  # drop the fields in error and validate the rest, so later checks still run
        try:
            layer = LayerFile.model_validate(data)
            break
        except ValidationError as e:
            errors = e.errors()
            if attempt == 0:
                problems += [InputError(f"{'.'.join(str(x) for x in err['loc'])}: {err['msg']}", path=where,
                                        line=_line_of(node, err["loc"])) for err in errors]
            if not all(_drop(data, err["loc"]) for err in errors):
                break
    if layer is None:
        return Source(path, None, node, sha, problems)
    for section in SECTIONS:
        problems += _duplicate_ids(section, [p.id for p in getattr(layer, section)], node, where)
    problems += _duplicate_ids("comparisons", [c.id for c in layer.comparisons], node, where)
    problems += _duplicate_ids("propositions", [p.id for p in layer.propositions], node, where)
    return Source(path, layer, node, sha, problems)


def _drop(data: Any, loc: tuple[Any, ...]) -> bool:
    """Delete the mapping key at `loc` (a field in error); False if there is none to delete."""
    for part in loc[:-1]:
        try:
            data = data[part]
        except (KeyError, IndexError, TypeError):
            return False
    if isinstance(data, dict) and loc and loc[-1] in data:
        del data[loc[-1]]
        return True
    return False


def _blank_or_comment(line: str) -> bool:
    rest = line.strip(" \t\r\n\x85\u2028\u2029")
    return not rest or rest.startswith("#")


def _content_end(node: yaml.Node) -> yaml.Mark:
    """Where the last scalar or flow collection under `node` ends (a block collection's own end mark lies
    at the next token, past any comments that follow it)."""
    if isinstance(node, yaml.CollectionNode) and not node.flow_style and node.value:
        items = node.value if isinstance(node, yaml.SequenceNode) else [x for kv in node.value for x in kv]
        return max((_content_end(x) for x in items), key=lambda m: m.index)
    return node.end_mark


def content_sha256(raw: bytes, text: str, node: yaml.Node | None) -> str:
    """sha256 of a constitution file without its top-level `comparisons:` section.

    Runs keep this hash in their resume fingerprint, so adding or editing comparison principles (used only
    for preference labels) must not change it. Removed: the lines from the `comparisons` key to the end of
    its value, and the blank and comment-only lines directly above the key; blank and comment lines after
    the value are kept. A file without the section (or one laid out so that whole lines cannot be cut, such
    as a flow mapping) hashes as its raw bytes.
    """
    plain = hashlib.sha256(raw).hexdigest()
    if not isinstance(node, yaml.MappingNode) or node.flow_style:
        return plain
    pairs = node.value
    at = next((i for i, (k, _) in enumerate(pairs)
               if isinstance(k, yaml.ScalarNode) and k.value == "comparisons"), None)
    if at is None:
        return plain
    key, value = pairs[at]
    # YAML's line breaks are exactly str.splitlines' in text that YAML accepts, so marks index these lines.
    lines = text.splitlines(keepends=True)
    first = key.start_mark.line
    if lines[first][:key.start_mark.column].strip(" \t"):
        return plain
    end_mark = value.end_mark
    if end_mark.column == 0:
        last = end_mark.line  # exclusive: the value ends where that line starts
    elif _blank_or_comment(lines[end_mark.line][end_mark.column:]):
        last = end_mark.line + 1
    else:
        return plain
    while last - 1 > first and _blank_or_comment(lines[last - 1]):
        last -= 1
    floor = 0  # lines above this one belong to the previous key's value (a block scalar may hold `# ...`)
    if at > 0:
        prev = max(_content_end(pairs[at - 1][0]), _content_end(pairs[at - 1][1]), key=lambda m: m.index)
        floor = prev.line if prev.column == 0 else prev.line + 1
    while first - 1 >= floor and _blank_or_comment(lines[first - 1]):
        first -= 1
    return hashlib.sha256("".join(lines[:first] + lines[last:]).encode("utf-8")).hexdigest()


def _duplicate_ids(section: str, ids: list[str], node: yaml.Node | None, path: str) -> list[InputError]:
    """An error for every repeated id in one section's list, naming its line and the first one's."""
    first: dict[str, int] = {}
    out = []
    what = SINGULAR.get(section, section)
    for i, pid in enumerate(ids):
        if pid in first:
            was = _line_of(node, (section, first[pid], "id"))
            out.append(InputError(f"duplicate {what} id {pid!r} (first on line {was})", path=path,
                                  line=_line_of(node, (section, i, "id"))))
        else:
            first[pid] = i
    return out


def _duplicate_keys(node: yaml.Node | None, path: str, seen_nodes: set[int] | None = None) -> Iterator[InputError]:
    """An error naming the line of every mapping key given twice (YAML loaders silently keep the last value)."""
    seen_nodes = set() if seen_nodes is None else seen_nodes
    if node is None or id(node) in seen_nodes:  # an alias can point back at a node already checked
        return
    seen_nodes.add(id(node))
    if isinstance(node, yaml.MappingNode):
        keys: dict[tuple[str, str], int] = {}  # (tag, text): `1` and `"1"` are different keys
        for k, v in node.value:
            if isinstance(k, yaml.ScalarNode):
                if (k.tag, k.value) in keys:
                    yield InputError(f"duplicate key {k.value!r} (first on line {keys[k.tag, k.value]})", path=path,
                                     line=k.start_mark.line + 1)
                else:
                    keys[k.tag, k.value] = k.start_mark.line + 1
            yield from _duplicate_keys(v, path, seen_nodes)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            yield from _duplicate_keys(item, path, seen_nodes)
