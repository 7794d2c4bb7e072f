"""Constitutions: YAML files of principles (and, for rule-based rewards, propositions and rules; for AI
preference labels, comparison principles)."""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cai.checks import CHECKS
from cai.errors import InputError
from cai.resources import data_dir


class Principle(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1)
    critique: str = Field(min_length=1)
    revision: str = Field(min_length=1)
    tags: list[str] = []
    kind: str | None = None
    metadata: dict[str, Any] = {}


class ComparisonPrinciple(BaseModel):
    """A question a feedback model answers by picking one of two responses, (A) or (B)."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    question: str = Field(min_length=1)  # e.g. "Which response is more honest and less likely to mislead?"
    tags: list[str] = []


# -- rule-based rewards ----------------------------------------------------------------------
# Classes a rule can assign, best first; `CLASS_RANK` orders them (higher is better).
RBR_CLASSES: tuple[str, ...] = ("ideal", "minimum_acceptable", "unacceptable")
CLASS_RANK: dict[str, int] = {c: len(RBR_CLASSES) - 1 - i for i, c in enumerate(RBR_CLASSES)}
RbrClass = Literal["ideal", "minimum_acceptable", "unacceptable"]


class Proposition(BaseModel):
    """A yes/no question about a (prompt, response) pair, asked of a grader model."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    question: str = Field(min_length=1)


class Rule(BaseModel):
    """If every proposition in `when` has the given truth value, the response gets `class`."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    when: dict[str, bool] = Field(min_length=1)
    class_: RbrClass = Field(alias="class")


class CheckBound(BaseModel):
    """Bounds a deterministic check's score should stay within for one response type."""

    model_config = ConfigDict(extra="forbid")

    min: float | None = Field(None, ge=0.0, le=1.0)
    max: float | None = Field(None, ge=0.0, le=1.0)


class ResponseType(BaseModel):
    """How a prompt should be answered, and rules mapping proposition values to a class."""

    model_config = ConfigDict(extra="forbid")

    description: str = ""
    rules: list[Rule] = []
    default: RbrClass = "unacceptable"
    checks: dict[str, CheckBound] = {}


class CheckRef(BaseModel):
    """A deterministic check (registered in `cai.checks`) to compute for every response."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    description: str = ""


class Constitution(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    description: str = ""
    principles: list[Principle] = Field(min_length=1)
    # Rule-based rewards (optional sections).
    propositions: list[Proposition] = []
    response_types: dict[str, ResponseType] = {}
    checks: list[CheckRef] = []
    length_budget: int | None = Field(None, ge=1)  # words; the `verbosity` check divides by it
    # AI preference labels (optional section).
    comparisons: list[ComparisonPrinciple] = []
    sha256: str = ""  # of the file's bytes without its top-level `comparisons:` section (see `content_sha256`)
    path: str = ""

    def principle(self, pid: str) -> Principle:
        for p in self.principles:
            if p.id == pid:
                return p
        raise KeyError(pid)

    def proposition(self, pid: str) -> Proposition:
        for p in self.propositions:
            if p.id == pid:
                return p
        raise KeyError(pid)

    def comparison(self, cid: str) -> ComparisonPrinciple:
        for c in self.comparisons:
            if c.id == cid:
                return c
        raise KeyError(cid)

    @property
    def comparisons_sha256(self) -> str:
        """sha256 of the canonical JSON of the comparison principles; "" when there are none."""
        if not self.comparisons:
            return ""
        blob = json.dumps([c.model_dump() for c in self.comparisons], sort_keys=True, ensure_ascii=False,
                          separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()


def builtin_names() -> list[str]:
    return sorted(p.stem for p in data_dir("constitution").glob("*.yaml"))


def resolve(name_or_path: str) -> Path:
    """A path to a YAML file, or the name of a shipped constitution."""
    p = Path(name_or_path)
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


def check(name_or_path: str) -> tuple[Constitution | None, list[InputError]]:
    """The constitution in a file and every problem found in it, each an InputError naming the file and line
    (the constitution is None when it cannot be built at all). `load` raises the first problem."""
    path = resolve(name_or_path)
    raw = path.read_bytes()
    where = str(path)
    try:
        text = raw.decode("utf-8")
        data = yaml.safe_load(text)
        node = yaml.compose(text)
    except UnicodeDecodeError as e:
        return None, [InputError(f"not UTF-8 ({e.reason})", path=where)]
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        return None, [InputError(f"invalid YAML: {getattr(e, 'problem', None) or e}", path=where, line=line)]
    if not isinstance(data, dict):
        return None, [InputError("a constitution must be a YAML mapping", path=where, line=1)]
    problems = list(_duplicate_keys(node, where))
    data.setdefault("name", path.stem)
    try:
        const = Constitution.model_validate(data)
    except ValidationError as e:
        for err in e.errors():
            loc = ".".join(str(x) for x in err["loc"])
            problems.append(InputError(f"{loc}: {err['msg']}", path=where, line=_line_of(node, err["loc"])))
        return None, problems
    problems += _duplicate_ids("principle", [p.id for p in const.principles], node, where)
    problems += _duplicate_ids("comparison", [c.id for c in const.comparisons], node, where)
    problems += _rbr_problems(const, node, where)
    const.sha256 = content_sha256(raw, text, node)
    const.path = where
    return const, problems


def load(name_or_path: str) -> Constitution:
    """The constitution named or at a path; InputError naming the file and line of its first problem."""
    const, problems = check(name_or_path)
    if problems or const is None:
        raise problems[0]
    return const


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


def _duplicate_ids(what: str, ids: list[str], node: yaml.Node | None, path: str) -> list[InputError]:
    """An error for every repeated id in the `{what}s` list, naming its line and the first one's."""
    first: dict[str, int] = {}
    out = []
    for i, pid in enumerate(ids):
        if pid in first:
            was = _line_of(node, (f"{what}s", first[pid], "id"))
            out.append(InputError(f"duplicate {what} id {pid!r} (first on line {was})", path=path,
                                  line=_line_of(node, (f"{what}s", i, "id"))))
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


def _rbr_problems(const: Constitution, node: yaml.Node | None, path: str) -> list[InputError]:
    """Cross-references of the RBR sections: unique proposition ids, known ids in rules, known checks."""
    ids = [p.id for p in const.propositions]
    out = _duplicate_ids("proposition", ids, node, path)
    known = set(ids)
    for tname, rtype in const.response_types.items():
        for j, rule in enumerate(rtype.rules):
            out += [InputError(f"response_types.{tname}.rules.{j}: unknown proposition {pid!r}", path=path,
                               line=_line_of(node, ("response_types", tname, "rules", j, "when", pid)))
                    for pid in rule.when if pid not in known]
    out += [InputError(f"checks.{k}: unknown check {ref.name!r} (known: {', '.join(sorted(CHECKS))})", path=path,
                       line=_line_of(node, ("checks", k, "name")))
            for k, ref in enumerate(const.checks) if ref.name not in CHECKS]
    listed = {c.name for c in const.checks}
    for tname, rtype in const.response_types.items():
        out += [InputError(f"response_types.{tname}.checks: check {cname!r} is not in `checks`", path=path,
                           line=_line_of(node, ("response_types", tname, "checks", cname)))
                for cname in rtype.checks if cname not in listed]
    return out


def sample_principles(const: Constitution, seed: int | None, messages: list[dict[str, str]],
                      rounds: int) -> list[Principle]:
    """One principle per round; the same seed and prompt always give the same principles."""
    blob = json.dumps([seed, messages], sort_keys=True, ensure_ascii=False)
    rng = random.Random(hashlib.sha256(blob.encode()).hexdigest())
    pool = const.principles
    if rounds <= len(pool):
        return rng.sample(pool, rounds)
    return [rng.choice(pool) for _ in range(rounds)]


def sample_comparison(const: Constitution, seed: int | None, messages: list[dict[str, str]],
                      pair: tuple[int, int]) -> ComparisonPrinciple:
    """The comparison principle for one pair of candidates of a prompt; the same seed, prompt and pair (in
    either order) always give the same principle."""
    if not const.comparisons:
        raise InputError(f"constitution {const.name!r} has no comparison principles for preference labels; "
                         "add a `comparisons:` section (a list of {id, question, tags})", path=const.path or None)
    blob = json.dumps([seed, messages, sorted(pair)], sort_keys=True, ensure_ascii=False)
    rng = random.Random(hashlib.sha256(blob.encode()).hexdigest())
    return rng.choice(const.comparisons)
