"""What the critic found: statistics per principle and per round, word diffs of each revision, rule-based
grades, the manifest's numbers, and two runs side by side. Each function takes a `cai.Run`, which has
them as methods (`run.principle_stats()`, ...); `cai.compare(a, b)` takes runs or run folders.

Lengths are in characters. A violation rate counts parsed verdicts only (unparsed ones are counted apart).
"""

from __future__ import annotations

import difflib
import html
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from cai.calls import prompt_text
from cai.errors import InputError
from cai.read.rows import GRADE_COLUMNS, Critique, RecordRows, frame, record_rows

if TYPE_CHECKING:
    import pandas as pd

    from cai.constitution import Constitution, Principle
    from cai.store.steps import StoredRecord



class Run(Protocol):
    """What these functions read of a run (`cai.read.run.Run` is one)."""

    path: Path

    @property
    def manifest(self) -> dict[str, Any]: ...

    def record_rows(self, done_only: bool = False) -> Iterable[RecordRows]: ...

    def stored_record(self, record_id: str) -> StoredRecord | None: ...

    def constitution(self) -> Constitution | None: ...


_TOKENS = re.compile(r"\s+|[^\s]+")


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else math.nan


@dataclass
class _Tally:
    sampled: int = 0
    violations: int = 0
    unparsed: int = 0
    severities: list[float] = field(default_factory=list)
    length_changes: list[float] = field(default_factory=list)
    reward_changes: list[float] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)

    def add(self, critique: Critique, rewards: dict[int, float]) -> None:
        self.sampled += 1
        verdict, rnd, revision = critique.step.verdict, critique.step.round, critique.revision
        if verdict is None:
            self.unparsed += 1
        else:
            self.violations += bool(verdict["violates"])
            self.severities.append(verdict["severity"])
        if revision is not None:
            self.length_changes.append(len(revision.data["response"]) - len(revision.data["before"]))
        if rnd in rewards:
            self.rewards.append(rewards[rnd])
            if rnd - 1 in rewards:
                self.reward_changes.append(rewards[rnd] - rewards[rnd - 1])

    def row(self) -> dict[str, Any]:
        parsed = self.sampled - self.unparsed
        return {"sampled": self.sampled, "violations": self.violations,
                "violation_rate": self.violations / parsed if parsed else math.nan,
                "mean_severity": _mean(self.severities), "unparsed": self.unparsed,
                "revised": len(self.length_changes), "mean_length_change": _mean(self.length_changes),
                "mean_reward_change": _mean(self.reward_changes)}


PRINCIPLE_COLUMNS = ["principle", "tags", "kind", "layer", "sampled", "violations", "violation_rate",
                     "mean_severity", "unparsed", "revised", "mean_length_change", "mean_reward_change"]
ROUND_COLUMNS = ["round", "critiques", "violations", "violation_rate", "mean_severity", "unparsed", "revised",
                 "mean_length_change", "mean_reward_change", "mean_reward"]


class CritiqueStats:
    """Tallies of the critiques per principle and per round, fed one record's rows at a time (`add`), so a
    reader that passes over the run anyway (the report) needs no pass of its own."""

    def __init__(self) -> None:
        self.by_principle: dict[str, _Tally] = {}
        self.by_round: dict[int, _Tally] = {}

    def add(self, rows: RecordRows) -> None:
        for c in rows.critiques:
            self.by_principle.setdefault(c.step.data["principle"], _Tally()).add(c, rows.rewards)
            self.by_round.setdefault(c.step.round, _Tally()).add(c, rows.rewards)

    @classmethod
    def of(cls, records: Iterable[RecordRows]) -> CritiqueStats:
        stats = cls()
        for rows in records:
            stats.add(rows)
        return stats

    def principles(self, const: Constitution | None) -> pd.DataFrame:
        """The `principle_stats` table, with tags, kind and layer from `const`."""
        principles: dict[str, Principle] = {p.id: p for p in const.principles} if const else {}
        rows = []
        for pid, tally in self.by_principle.items():
            p = principles.get(pid)
            rows.append({"principle": pid, "tags": ", ".join(p.tags) if p else "", "kind": p.kind if p else None,
                         "layer": getattr(p, "layer", None), **tally.row()})
        rows.sort(key=lambda r: (-(0 if math.isnan(r["violation_rate"]) else r["violation_rate"]),
                                 -r["sampled"], r["principle"]))
        return frame(rows, PRINCIPLE_COLUMNS)

    def rounds(self) -> pd.DataFrame:
        """The `rounds` table."""
        rows = []
        for rnd in sorted(self.by_round):
            tally = self.by_round[rnd]
            row = tally.row()
            rows.append({"round": rnd, "critiques": row.pop("sampled"), **row, "mean_reward": _mean(tally.rewards)})
        return frame(rows, ROUND_COLUMNS)


def principle_stats(run: Run) -> pd.DataFrame:
    """Per principle sampled (most violated first): its tags, kind and layer from the run's constitution,
    times sampled, violations and rate, mean severity, unparsed verdicts, revisions, mean length change
    of the revision, and (with rule-based rewards) the mean reward change the revision brought."""
    return CritiqueStats.of(run.record_rows()).principles(run.constitution())


def rounds(run: Run) -> pd.DataFrame:
    """Per critique round: critiques, violations and rate, mean severity, unparsed verdicts, revisions, mean
    length change, and with rewards the mean reward after the round. Does the loop converge?"""
    return CritiqueStats.of(run.record_rows()).rounds()


def word_diff(before: str, after: str) -> list[tuple[str, str]]:
    """(op, text) pieces turning `before` into `after` word by word; op is equal, delete or insert."""
    a, b = _TOKENS.findall(before), _TOKENS.findall(after)
    out: list[tuple[str, str]] = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if op == "equal":
            out.append(("equal", "".join(a[i1:i2])))
            continue
        if i2 > i1:
            out.append(("delete", "".join(a[i1:i2])))
        if j2 > j1:
            out.append(("insert", "".join(b[j1:j2])))
    return out


@dataclass(repr=False)
class RecordDiff:
    """A record's draft and each revision as word diffs: HTML in Jupyter, plain text (`[-old-]{+new+}`)
    elsewhere. `steps` holds one dict per round: round, principle, violates, severity, critique, diff."""

    id: str
    prompt: str
    draft: str
    steps: list[dict[str, Any]]

    def __str__(self) -> str:
        lines = [f"record {self.id}: {self.prompt}", "", "draft:", self.draft]
        for s in self.steps:
            lines += ["", f"round {s['round']} — {s['principle']} (violates={s['violates']}, "
                          f"severity={s['severity']}): {s['critique']}"]
            if s["diff"] is not None:
                lines.append("".join(t if op == "equal" else f"[-{t}-]" if op == "delete" else f"{{+{t}+}}"
                                     for op, t in s["diff"]))
        return "\n".join(lines)

    def __repr__(self) -> str:
        return str(self)

    def _repr_html_(self) -> str:
        esc = html.escape
        parts = [f"<div><b>{esc(self.id)}</b>: {esc(self.prompt)}</div>",
                 f"<div style='white-space:pre-wrap;margin:4px 0'><i>draft</i><br>{esc(self.draft)}</div>"]
        tag = {"equal": "span", "delete": "del style='background:#fdd'", "insert": "ins style='background:#dfd'"}
        for s in self.steps:
            parts.append(f"<div style='margin-top:6px'><i>round {s['round']} · {esc(s['principle'])} · "
                         f"violates={s['violates']} · severity={s['severity']}</i><br>{esc(s['critique'])}</div>")
            if s["diff"] is not None:
                body = "".join(f"<{tag[op]}>{esc(t)}</{tag[op].split()[0]}>" for op, t in s["diff"])
                parts.append(f"<div style='white-space:pre-wrap;border-left:3px solid #ccc;padding-left:6px'>"
                             f"{body}</div>")
        return "".join(parts)


def diff(run: Run, record_id: str) -> RecordDiff:
    """Draft → each revision of record `record_id` as word diffs, with each round's critique."""
    rec = run.stored_record(record_id)
    if rec is None:
        raise InputError(f"no record {record_id!r} in this run", path=str(run.path))
    rows = record_rows(rec)
    steps = []
    for c in rows.critiques:
        v, rev = c.step.verdict or {}, c.revision
        steps.append({"round": c.step.round, "principle": c.step.data["principle"], "violates": v.get("violates"),
                      "severity": v.get("severity"), "critique": c.step.data["critique"],
                      "diff": word_diff(rev.data["before"], rev.data["response"]) if rev is not None else None})
    return RecordDiff(record_id, prompt_text(rec.messages), rows.draft or "", steps)


def grades(run: Run) -> pd.DataFrame:
    """With rule-based rewards: one row per (record, graded response, proposition) with p_yes and method,
    and one per check with its score; `step` is draft (round 0) or revision; `reward` is the response's."""
    return frame([row for rows in run.record_rows() for row in rows.grades], GRADE_COLUMNS)


def _numbers(data: Any, prefix: str = "") -> Iterable[tuple[str, float]]:
    if isinstance(data, dict):
        for k, v in data.items():
            yield from _numbers(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(data, (int, float)) and not isinstance(data, bool):
        yield prefix, data


def summary(run: Run) -> pd.DataFrame:
    """The manifest's numbers (records, exports, tokens, cost, errors, cache hits, wall time, ...) as rows of
    (metric, value), metric a dotted path into manifest.json; settings are left out."""
    m = {k: v for k, v in run.manifest.items() if k not in ("settings", "seed")}
    return frame([{"metric": k, "value": v} for k, v in _numbers(m)], ["metric", "value"])


def _per_prompt(run: Run) -> dict[str, dict[str, Any]]:
    """Record id → prompt, final, lengths, violations, parsed verdicts and rewards, for finished records."""
    out = {}
    for rows in run.record_rows(done_only=True):
        draft, final, rewards = rows.draft, rows.final, rows.rewards
        verdicts = [c.step.verdict for c in rows.critiques if c.step.verdict is not None]
        out[rows.record.id] = {"prompt": prompt_text(rows.record.messages), "final": final or "",
                               "draft_length": len(draft or ""), "final_length": len(final or ""),
                               "violations": sum(bool(v["violates"]) for v in verdicts), "verdicts": len(verdicts),
                               "severity": [v["severity"] for v in verdicts],
                               "reward_draft": rewards.get(0, math.nan),
                               "reward_final": rewards[max(rewards)] if rewards else math.nan}
    return out


def _label(run: Run, other: Run) -> str:
    return run.path.name if run.path.name != other.path.name else str(run.path)


def compare(a: Run, b: Run, by: str = "metric") -> pd.DataFrame:
    """Two runs over the same prompts (matched by record id; finished in both), side by side.

    `by="metric"`: one row per metric (prompts compared, violation rate, mean severity, mean draft and final
    length, mean length change, mean draft and final reward, share of finals whose reward improved) with a
    column per run and their difference (b − a). `by="prompt"`: one row per prompt with each run's final
    response, length, violations and final reward."""
    if by not in ("metric", "prompt"):
        raise InputError(f"by must be 'metric' or 'prompt', not {by!r}")
    pa, pb = _per_prompt(a), _per_prompt(b)
    ids = [i for i in pa if i in pb]
    la, lb = _label(a, b), _label(b, a)
    if by == "prompt":
        rows = [{"id": i, "prompt": pa[i]["prompt"], f"final_{la}": pa[i]["final"], f"final_{lb}": pb[i]["final"],
                 f"length_{la}": pa[i]["final_length"], f"length_{lb}": pb[i]["final_length"],
                 f"violations_{la}": pa[i]["violations"], f"violations_{lb}": pb[i]["violations"],
                 f"reward_{la}": pa[i]["reward_final"], f"reward_{lb}": pb[i]["reward_final"]} for i in ids]
        return frame(rows, ["id", "prompt", f"final_{la}", f"final_{lb}", f"length_{la}", f"length_{lb}",
                            f"violations_{la}", f"violations_{lb}", f"reward_{la}", f"reward_{lb}"])

    def metrics(per: dict[str, dict[str, Any]]) -> dict[str, float]:
        rs = [per[i] for i in ids]
        verdicts = sum(r["verdicts"] for r in rs)
        rewarded = [r for r in rs if not math.isnan(r["reward_final"]) and not math.isnan(r["reward_draft"])]
        return {"prompts": len(rs),
                "violation_rate": sum(r["violations"] for r in rs) / verdicts if verdicts else math.nan,
                "mean_severity": _mean([s for r in rs for s in r["severity"]]),
                "mean_draft_length": _mean([r["draft_length"] for r in rs]),
                "mean_final_length": _mean([r["final_length"] for r in rs]),
                "mean_length_change": _mean([r["final_length"] - r["draft_length"] for r in rs]),
                "mean_draft_reward": _mean([r["reward_draft"] for r in rewarded]),
                "mean_final_reward": _mean([r["reward_final"] for r in rewarded]),
                "reward_improved_share": _mean([float(r["reward_final"] > r["reward_draft"]) for r in rewarded])}

    ma, mb = metrics(pa), metrics(pb)
    rows = [{"metric": k, la: ma[k], lb: mb[k], "difference": mb[k] - ma[k]} for k in ma]
    return frame(rows, ["metric", la, lb, "difference"])
