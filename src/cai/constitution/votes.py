"""Public input on a constitution: statements people voted on (as Collective Constitutional AI gathered them
with Polis) become a constitution layer, one principle per statement that the public broadly supports.

Inputs (`read_votes`):

- A CSV file: `statement`, `agree`, `disagree` (counts), optional `pass` (count), optional `id` (default: the
  row's number, 1 for the first data row) and optional `moderated` (-1 drops the statement). Opinion groups
  are optional column triples `agree_<group>`, `disagree_<group>`, `pass_<group>` (`pass_` optional): the group
  is the text after the first underscore (`agree_urban` is group `urban`), and an `agree_<group>` needs its
  `disagree_<group>`. The plain counts are everyone's; the groups' counts may add up to less (voters in no
  group) but not to more. An empty count cell is 0.
- A Polis export folder holding `comments.csv` (`comment-id`, `moderated`, `comment-body`, and `agrees`,
  `disagrees`) and `participants-votes.csv` (`participant`, `group-id`, `n-comments`, `n-votes`, `n-agree`,
  `n-disagree`, then one column per comment id: 1 agree, -1 disagree, 0 pass, empty unseen). The counts,
  overall and per group, are tallied from participants-votes.csv; the `agrees`/`disagrees` of comments.csv are
  only a cross-check (a difference is reported as a warning). Participants with an empty `group-id` (Polis
  placed them in no opinion group) count in the totals but form no group.

Selection (`select`): the tests below run in order and the first one failed is why a statement is left out.

1. `moderated_out`: moderated = -1 (rejected by a moderator). Never kept, whatever the votes.
2. `too_few_votes`: fewer than `min_votes` (default 10) votes; votes are agree + disagree, passes are not votes.
3. `below_min_agree`: agree share, agree / (agree + disagree), below `min_agree` (default 0.7).
4. Group-informed consensus, where there are groups: a statement must clear both bars in every group, so that
   one large group cannot carry it alone. A group whose agree share is below `min_agree` makes it `divisive`;
   otherwise a group with fewer than `min_votes` votes makes it `too_few_votes`. The report names the groups.

A share equal to `min_agree` clears it. Output (`write_layer`): a constitution YAML with `name`, `description`
and one principle per kept statement (id `public-<statement id>`, tag `public-input`, the votes in `metadata`).
The statements become principles rather than objectives because each is a norm a response can go against: the
critique step asks whether the response goes against the statement and the revision step rewrites it to respect
the statement, which is exactly what the loop does with every principle. Load the layer with
`cai.constitution.load(path)`.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cai.constitution import LayerFile
from cai.errors import InputError, OutputError
from cai.limits import CONSTITUTION_BYTES, VOTES_BYTES, decode, mib, read_bytes

MIN_VOTES = 10
MIN_AGREE = 0.7
REASONS = ("moderated_out", "too_few_votes", "below_min_agree", "divisive")
TAG = "public-input"
POLIS_META = {"participant", "group-id", "n-comments", "n-votes", "n-agree", "n-disagree"}


@dataclass
class Tally:
    """Agree, disagree and pass counts of one statement, overall or in one group."""

    agree: int = 0
    disagree: int = 0
    passes: int = 0

    @property
    def votes(self) -> int:  # a pass is not a vote
        return self.agree + self.disagree

    @property
    def share(self) -> float | None:  # agree / (agree + disagree); None without votes
        return self.agree / self.votes if self.votes else None

    def add(self, vote: int) -> None:
        """Count one Polis vote: 1 agree, -1 disagree, 0 pass."""
        self.agree, self.disagree, self.passes = (self.agree + (vote == 1), self.disagree + (vote == -1),
                                                  self.passes + (vote == 0))

    def to_dict(self) -> dict[str, Any]:
        share = None if self.share is None else round(self.share, 4)
        return {"agree": self.agree, "disagree": self.disagree, "pass": self.passes, "agree_share": share}


@dataclass
class Statement:
    id: str
    text: str
    total: Tally
    groups: dict[str, Tally] = field(default_factory=dict)  # every group of the input, zero when none voted
    moderated: int = 0  # Polis: 1 accepted, 0 not moderated, -1 moderated out

    @property
    def principle_id(self) -> str:
        return "public-" + re.sub(r"[^A-Za-z0-9_.-]+", "-", self.id).strip("-")


@dataclass
class Votes:
    """What `read_votes` read: the statements, the opinion groups (maybe none) and warnings."""

    source: str
    format: str  # "csv" or "polis"
    statements: list[Statement]
    groups: list[str]
    warnings: list[str] = field(default_factory=list)


@dataclass
class Decision:
    statement: Statement
    reason: str | None  # None when kept, else one of REASONS
    groups: list[str] = field(default_factory=list)  # the groups that failed a bar
    detail: str = ""

    @property
    def kept(self) -> bool:
        return self.reason is None


@dataclass
class VoteImport:
    """The selection: every statement's decision, in input order, and where the layer was written."""

    votes: Votes
    min_votes: int
    min_agree: float
    decisions: list[Decision]
    output: str | None = None

    @property
    def kept(self) -> list[Decision]:
        return [d for d in self.decisions if d.kept]

    @property
    def dropped(self) -> list[Decision]:
        return [d for d in self.decisions if not d.kept]

    def to_dict(self) -> dict[str, Any]:
        def row(d: Decision) -> dict[str, Any]:
            s = d.statement
            out = {"id": s.id, "text": s.text, "votes": s.total.to_dict(),
                   "groups": {g: t.to_dict() for g, t in s.groups.items()}}
            return {**out, "principle": s.principle_id} if d.kept else {
                **out, "reason": d.reason, "failed_groups": d.groups, "detail": d.detail}
        v = self.votes
        return {"source": v.source, "format": v.format, "output": self.output, "min_votes": self.min_votes,
                "min_agree": self.min_agree, "groups": v.groups, "statements": len(self.decisions),
                "kept": [row(d) for d in self.kept], "dropped": [row(d) for d in self.dropped],
                "warnings": v.warnings}


# -- reading ----------------------------------------------------------------------------------------------

def _read_csv(path: Path, required: tuple[str, ...]) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """Header (the first line) and (line, row) pairs of a CSV file; InputError naming file and line."""
    text = decode(read_bytes(path, VOTES_BYTES, "votes file"), str(path))
    reader = csv.reader(io.StringIO(text, newline=""))
    rows: list[tuple[int, dict[str, str]]] = []
    header: list[str] | None = None
    start = 1
    try:
        for cells in reader:
            line, start = start, reader.line_num + 1
            if header is not None and not any(c.strip() for c in cells):
                continue
            if header is None:
                header = [c.strip() for c in cells]
                dup = next((c for c, n in Counter(header).items() if n > 1), None)
                if dup is not None:
                    raise InputError(f"column {dup!r} appears twice", path=str(path), line=line)
                missing = [c for c in required if c not in header]
                if missing:
                    raise InputError(f"missing column(s) {', '.join(missing)} (found: {', '.join(header)})",
                                     path=str(path), line=line)
                continue
            if len(cells) > len(header):
                raise InputError(f"{len(cells)} fields, but the header has {len(header)}", path=str(path), line=line)
            rows.append((line, dict(zip(header, [c.strip() for c in cells] + [""] * (len(header) - len(cells))))))
    except csv.Error as e:
        raise InputError(f"bad CSV: {e}", path=str(path), line=start) from None
    if header is None:
        raise InputError(f"empty file; expected columns {', '.join(required)}", path=str(path), line=1)
    return header, rows


def _number(value: str, allowed: range, what: str, path: Path, line: int) -> int:
    """`value` as an int within `allowed` ("" is 0; "12.0" is 12); else InputError naming file:line."""
    try:
        f = float(value or 0)
        if f.is_integer() and int(f) in allowed:
            return int(f)
    except ValueError:
        pass
    raise InputError(f"{what}: expected {'a count' if allowed.start == 0 else 'one of -1, 0, 1'}, got {value!r}",
                     path=str(path), line=line)


COUNT = range(0, 2**63)
VOTE = range(-1, 2)


def _add(out: list[Statement], seen: dict[str, int], st: Statement, path: Path, line: int) -> None:
    """Append `st`, refusing a statement id (or principle id) that an earlier line already gave."""
    for key in (f"id {st.id!r}", f"principle id {st.principle_id!r}"):
        if key in seen:
            raise InputError(f"duplicate statement {key} (first on line {seen[key]})", path=str(path), line=line)
        seen[key] = line
    if st.principle_id == "public-":
        raise InputError(f"statement id {st.id!r} has no letters or digits", path=str(path), line=line)
    out.append(st)


def read_votes(path: Path) -> Votes:
    """A votes CSV file, or a Polis export folder (comments.csv + participants-votes.csv)."""
    path = Path(path)
    if path.is_dir():
        return read_polis(path)
    if not path.exists():
        raise InputError("no such file or folder", path=str(path))
    return read_votes_csv(path)


def _tally(row: dict[str, str], suffix: str, path: Path, line: int) -> Tally:
    """The agree/disagree/pass counts of columns ending in `suffix` ("" for the overall ones)."""
    return Tally(*(_number(row.get(k + suffix, ""), COUNT, k + suffix, path, line)
                   for k in ("agree", "disagree", "pass")))


def read_votes_csv(path: Path) -> Votes:
    """A CSV of `statement, agree, disagree[, pass]` counts with optional `agree_<group>` columns."""
    header, rows = _read_csv(path, ("statement", "agree", "disagree"))
    groups = [c.split("_", 1)[1] for c in header if c.startswith("agree_") and c != "agree_"]
    for c in header:
        kind, _, g = c.partition("_")
        if kind in ("agree", "disagree", "pass") and g and g not in groups:
            raise InputError(f"column {c!r} has no matching 'agree_{g}'", path=str(path), line=1)
    for g in groups:
        if f"disagree_{g}" not in header:
            raise InputError(f"column 'agree_{g}' has no matching 'disagree_{g}'", path=str(path), line=1)
    out: list[Statement] = []
    seen: dict[str, int] = {}
    for n, (line, row) in enumerate(rows, 1):
        if not row["statement"]:
            raise InputError("empty statement", path=str(path), line=line)
        total = _tally(row, "", path, line)
        by_group = {g: _tally(row, f"_{g}", path, line) for g in groups}
        for k, v in (("agree", total.agree), ("disagree", total.disagree), ("pass", total.passes)):
            s = sum(getattr(t, "passes" if k == "pass" else k) for t in by_group.values())
            if s > v:
                raise InputError(f"the {k}_<group> counts add up to {s}, more than {k} ({v})", path=str(path),
                                 line=line)
        moderated = _number(row.get("moderated", ""), VOTE, "moderated", path, line)
        _add(out, seen, Statement(row.get("id") or str(n), row["statement"], total, by_group, moderated), path, line)
    return Votes(str(path), "csv", out, groups)


def read_polis(folder: Path) -> Votes:
    """A Polis export folder; counts come from participants-votes.csv (comments.csv's are a cross-check)."""
    cpath, vpath = folder / "comments.csv", folder / "participants-votes.csv"
    missing = [p.name for p in (cpath, vpath) if not p.is_file()]
    if missing:
        raise InputError(f"not a Polis export: no {' and no '.join(missing)} in this folder", path=str(folder))
    cheader, crows = _read_csv(cpath, ("comment-id", "moderated"))
    body = next((c for c in ("comment-body", "comment_text") if c in cheader), None)
    if body is None:
        raise InputError("missing column comment-body", path=str(cpath), line=1)
    out: list[Statement] = []
    seen: dict[str, int] = {}
    claimed: dict[str, tuple[int, int, int]] = {}  # comments.csv's own agrees/disagrees, and the line
    for line, row in crows:
        cid = row["comment-id"]
        if not cid:
            raise InputError("empty comment-id", path=str(cpath), line=line)
        mod = _number(row["moderated"], VOTE, "moderated", cpath, line)
        _add(out, seen, Statement(cid, row[body], Tally(), moderated=mod), cpath, line)
        if {"agrees", "disagrees"} <= set(cheader):
            claimed[cid] = (_number(row["agrees"], COUNT, "agrees", cpath, line),
                            _number(row["disagrees"], COUNT, "disagrees", cpath, line), line)
    by_id = {s.id: s for s in out}
    vheader, vrows = _read_csv(vpath, ("participant", "group-id"))
    warnings = [f"{vpath}: column {c!r} is not a comment id of comments.csv; ignored"
                for c in vheader if c not in POLIS_META and c not in by_id]
    warnings += [f"{vpath}: comment {cid} has no column (no votes)" for cid in by_id if cid not in vheader]
    cols = [c for c in vheader if c in by_id]
    groups: set[str] = set()
    for line, row in vrows:
        g = row["group-id"]
        if g:
            groups.add(g)
        for cid in cols:
            if not row[cid]:
                continue  # unseen
            v = _number(row[cid], VOTE, f"vote on comment {cid}", vpath, line)
            by_id[cid].total.add(v)
            if g:  # a participant in no group counts in the total only
                by_id[cid].groups.setdefault(g, Tally()).add(v)
    order = sorted(groups, key=lambda g: (not g.isdigit(), int(g) if g.isdigit() else 0, g))
    for s in out:
        s.groups = {g: s.groups.get(g, Tally()) for g in order}
        if s.id in claimed and claimed[s.id][:2] != (s.total.agree, s.total.disagree):
            a, d, line = claimed[s.id]
            warnings.append(f"{cpath}:{line}: comment {s.id} claims {a} agrees / {d} disagrees; participants-votes.csv "
                            f"gives {s.total.agree} / {s.total.disagree} (used)")
    if all(s.id.isdigit() for s in out):
        out.sort(key=lambda s: int(s.id))
    return Votes(str(folder), "polis", out, order, warnings)


# -- selection and output -------------------------------------------------------------------------------

def decide(st: Statement, min_votes: int = MIN_VOTES, min_agree: float = MIN_AGREE) -> Decision:
    """Keep or drop one statement (see the module docstring for the tests and their order)."""
    def clears(t: Tally) -> bool:
        return t.share is not None and t.share + 1e-12 >= min_agree
    t = st.total
    if st.moderated == -1:
        return Decision(st, "moderated_out", detail="moderated out (moderated = -1)")
    if t.votes < min_votes:
        return Decision(st, "too_few_votes", detail=f"{t.votes} votes < {min_votes} ({t.passes} passes)")
    if not clears(t):
        return Decision(st, "below_min_agree", detail=f"agree {t.share:.2f} < {min_agree:g} of {t.votes} votes")
    low = [g for g, x in st.groups.items() if x.votes >= min_votes and not clears(x)]
    if low:
        return Decision(st, "divisive", low, "; ".join(
            f"group {g}: agree {st.groups[g].share:.2f} < {min_agree:g} of {st.groups[g].votes} votes" for g in low)
            + f" (overall {t.share:.2f})")
    few = [g for g, x in st.groups.items() if x.votes < min_votes]
    if few:
        return Decision(st, "too_few_votes", few, "; ".join(
            f"group {g}: {st.groups[g].votes} votes < {min_votes}" for g in few))
    return Decision(st, None, detail=f"agree {t.share:.2f} of {t.votes} votes")


def select(votes: Votes, min_votes: int = MIN_VOTES, min_agree: float = MIN_AGREE) -> VoteImport:
    """Decide every statement."""
    if min_votes < 1 or not 0.0 <= min_agree <= 1.0:
        raise InputError(f"need min_votes >= 1 and 0 <= min_agree <= 1 (got {min_votes}, {min_agree})")
    return VoteImport(votes, min_votes, min_agree, [decide(s, min_votes, min_agree) for s in votes.statements])


def principle(st: Statement) -> dict[str, Any]:
    """The principle of one kept statement: critique and revision requests, and its votes as metadata."""
    meta: dict[str, Any] = {"statement_id": st.id, "text": st.text, "votes": st.total.to_dict()}
    if st.groups:
        meta["groups"] = {g: t.to_dict() for g, t in st.groups.items()}
    return {"id": st.principle_id,
            "critique": f'Does the response go against this publicly supported statement: "{st.text}"? '
                        "Point out where it does, or say that it does not.",
            "revision": "Rewrite the response so that it respects this statement, while still helping with the "
                        f'request: "{st.text}"',
            "tags": [TAG], "metadata": meta}


def layer(result: VoteImport, name: str) -> dict[str, Any]:
    """The constitution (a plain dict) of the kept statements."""
    v = result.votes
    groups = f", in every opinion group ({', '.join(v.groups)})" if v.groups else ""
    src = f"the Polis export {Path(v.source).name}/" if v.format == "polis" else f"the votes file {Path(v.source).name}"
    desc = (f"Publicly supported statements from {src}: kept {len(result.kept)} of "
            f"{len(result.decisions)}, those with at least {result.min_votes} agree/disagree votes and an agree "
            f"share of at least {result.min_agree:g}{groups}.")
    return {"name": name, "description": desc, "principles": [principle(d.statement) for d in result.kept]}


def write_layer(result: VoteImport, output: Path, name: str | None = None) -> dict[str, Any]:
    """Write the layer to `output` (YAML); InputError when no statement was kept. Returns what was written."""
    output = Path(output)
    if not result.kept:
        raise InputError(f"no statement was kept; {output} not written", path=result.votes.source)
    data = layer(result, name or output.stem)
    LayerFile.model_validate(data)
    text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=120)
    if len(text.encode("utf-8")) > CONSTITUTION_BYTES:
        raise InputError(f"the {len(result.kept)} kept statements make a layer over the {mib(CONSTITUTION_BYTES)} "
                         "limit for a constitution file; raise --min-votes or --min-agree", path=result.votes.source)
    tmp = output.with_name(f".{output.name}.tmp")
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, output)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise OutputError(f"cannot write: {e.strerror or e}", path=str(output)) from None
    result.output = str(output)
    return data


def import_votes(path: Path, output: Path, *, min_votes: int = MIN_VOTES, min_agree: float = MIN_AGREE,
                 name: str | None = None) -> VoteImport:
    """Read votes (CSV file or Polis folder), select the publicly supported statements, write the layer."""
    result = select(read_votes(Path(path)), min_votes, min_agree)
    write_layer(result, Path(output), name)
    return result
