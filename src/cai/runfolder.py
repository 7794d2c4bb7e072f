"""`Run`: a run folder read as pandas DataFrames (flat columns), its status and manifest, and its exports.

Reads open a read-only snapshot of `run.sqlite` per call: safe while another process writes the run,
no lock taken, nothing written. `export()` is the one method that writes; it takes the run lock.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cai import explore
from cai.constitution import Constitution
from cai.constitution import load as load_constitution
from cai.errors import CaiError, InputError
from cai.export import ManifestExtra, export_run, run_settings
from cai.results import developer_as_system_turns, draft_and_final, frame, label_rows, prompt_text, record_rows
from cai.settings import LabelSettings
from cai.status import run_status
from cai.store import Store

if TYPE_CHECKING:
    import pandas as pd


#: The columns of `Run.labels()`: one row per comparison of two candidates (see `cai.results.label_rows`).
LABEL_COLUMNS = ["id", "a", "b", "source_a", "source_b", "response_a", "response_b", "principle", "p_ab", "p_ba",
                 "p", "method", "judge"]


def _reply_fields(reply: dict[str, Any]) -> dict[str, Any]:
    """The columns `Run.calls` takes from a stored reply (a Completion's JSON; older ones lack the cache fields)."""
    return {"tokens_cached": reply.get("tokens_cached", 0), "tokens_cache_write": reply.get("tokens_cache_write", 0),
            "batch": bool(reply.get("batch")), "text": reply.get("text"), "structured": reply.get("structured")}


class Run:
    """A cai run folder. Every table method returns a new DataFrame, in input order."""

    def __init__(self, path: str | os.PathLike[str], invocation: dict[str, Any] | None = None,
                 manifest_extras: Sequence[ManifestExtra] = ()) -> None:
        self.path = Path(path)
        Store.open_run(self.path, readonly=True).close()  # InputError / DamagedStore now, not at first use
        #: counts of the invocation that returned this object (`cai.run`); None for `open_run`
        self.invocation = invocation
        #: plugins' manifest sections that `export()` adds (cai.api passes rbr's refusal metrics)
        self.manifest_extras = tuple(manifest_extras)

    def __repr__(self) -> str:
        c = self.status()["records"]
        return f"<cai.Run {str(self.path)!r}: {c['done']} done, {c['failed']} failed of {c['input']}>"

    def _store(self) -> Store:
        return Store.open_run(self.path, readonly=True)

    @property
    def manifest(self) -> dict[str, Any]:
        """manifest.json as written by the last export ({} before the first)."""
        try:
            return json.loads((self.path / "manifest.json").read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}

    def status(self) -> dict[str, Any]:
        """What `cai status --json` prints: counts that add up, tokens, errors, a live writer's pid."""
        return run_status(self.path)

    def _rows(self, done_only: bool = False) -> list[tuple[dict[str, Any], tuple[Any, ...]]]:
        store = self._store()
        try:
            margin = run_settings(store).export.min_reward_margin
            return [(rec, record_rows(rec, margin)) for rec in store.iter_records()
                    if not done_only or rec["status"] == "done"]
        finally:
            store.close()

    def records(self) -> pd.DataFrame:
        """One row per record: id, status, prompt (text), messages, draft, final, rounds, violations, the
        input's other fields (e.g. `expected`) as columns."""
        rows = []
        for rec, (_, _, crits, dropped) in self._rows():
            draft, final = draft_and_final(rec["steps"])
            rows.append({"id": rec["id"], "status": rec["status"], "prompt": prompt_text(rec["messages"]),
                         "messages": rec["messages"], "draft": draft, "final": final, "rounds": len(crits),
                         "violations": sum(bool(c["verdict"] and c["verdict"]["violates"]) for c in crits),
                         "pair_dropped": dropped})
            rows[-1].update({k: v for k, v in rec["extra"].items() if k not in rows[-1]})
        return frame(rows, columns=None if rows else ["id", "status", "prompt", "messages", "draft",
                                                              "final", "rounds", "violations", "pair_dropped"])

    def critiques(self) -> pd.DataFrame:
        """One row per critique: id, round, principle, its layer and kind, critique, violates, severity,
        rule_override (None unless the constitution has rules or defaults), parsed, before, after."""
        rows = []
        for _, (_, _, crits, _) in self._rows():
            for c in crits:
                v = c["verdict"] or {}
                rows.append({"id": c["id"], "round": c["round"], "principle": c["principle"], "layer": c["layer"],
                             "kind": c["kind"], "critique": c["critique"], "violates": v.get("violates"),
                             "severity": v.get("severity"), "rule_override": c["rule_override"],
                             "parsed": c["parsed"], "before": c["before"], "after": c["after"]})
        return frame(rows, columns=["id", "round", "principle", "layer", "kind", "critique", "violates", "severity",
                                    "rule_override", "parsed", "before", "after"])

    def _labeled(self) -> tuple[bool, list[tuple[dict[str, Any], tuple[Any, ...], tuple[Any, ...]]]]:
        """(whether the run has AI preference labels, [(record, its `record_rows`, its `label_rows`)] for the
        done records): labels as the exports write them, with the run's `--min-margin` and `--rank-by`."""
        store = self._store()
        try:
            settings = run_settings(store)
            lab = settings.labels or LabelSettings()
            has_labels = settings.labels is not None or store.has_step("label")
            margin = settings.export.min_reward_margin
            return has_labels, [(rec, record_rows(rec, margin), label_rows(rec, lab.min_margin, lab.rank_by))
                                for rec in store.iter_records() if rec["status"] == "done"]
        finally:
            store.close()

    def pairs(self) -> pd.DataFrame:
        """Preference pairs as exported (TRL message lists) plus flat text columns: prompt_text, chosen_text,
        rejected_text, principles, rounds, violations (and rewards with --rbr). A run with AI preference labels
        also has its AI-labeled pairs, after each record's revision pair, and every pair has score_chosen,
        score_rejected, source ("revision" or "ai_label") and label (a dict for AI-labeled pairs, else None),
        as in pairs.jsonl."""
        has_labels, records = self._labeled()
        rows = []
        for _, (_, pair, _, _), (ai_pairs, _, _) in records:
            if pair is not None:
                meta = pair.pop("metadata")
                if has_labels:  # the columns every pair of a labeled run has (as cai.export writes them)
                    pair.update(score_chosen=pair.get("reward_chosen"), score_rejected=pair.get("reward_rejected"),
                                source="revision", label=None)
                rows.append({**pair, "prompt_text": prompt_text(pair["prompt"]),
                             "chosen_text": pair["chosen"][0]["content"],
                             "rejected_text": pair["rejected"][0]["content"], **meta})
            for ai in ai_pairs:
                rows.append({**ai, "prompt_text": prompt_text(ai["prompt"]), "chosen_text": ai["chosen"][0]["content"],
                             "rejected_text": ai["rejected"][0]["content"]})
        columns = ["id", "prompt", "chosen", "rejected", "prompt_text", "chosen_text", "rejected_text"]
        if has_labels:
            columns += ["score_chosen", "score_rejected", "source", "label"]
        return frame(rows, columns=None if rows else columns)

    def labels(self) -> pd.DataFrame:
        """AI preference labels: one row per comparison of two candidates of a done record, as in labels.jsonl:
        id, a, b (candidate indices), source_a, source_b, response_a, response_b, principle, p_ab (P(A) with a
        shown as (A)), p_ba (P(A) with b shown as (A)), p (P(a ≻ b) = (p_ab + 1 − p_ba) / 2), method, judge.
        Empty (with these columns) for a run without labels."""
        _, records = self._labeled()
        rows = [row for _, _, (_, comparisons, _) in records for row in comparisons]
        return frame(rows, columns=LABEL_COLUMNS)

    def sft(self, developer_as_system: bool = False) -> pd.DataFrame:
        """SFT rows as exported (`messages`) plus prompt_text and completion (the final response)."""
        rows = []
        for _, (sft, _, _, _) in self._rows(done_only=True):
            if sft is None:
                continue
            msgs = developer_as_system_turns(sft["messages"]) if developer_as_system else sft["messages"]
            rows.append({"id": sft["id"], "messages": msgs, "prompt_text": prompt_text(msgs[:-1]),
                         "completion": msgs[-1]["content"]})
        return frame(rows, columns=["id", "messages", "prompt_text", "completion"])

    def errors(self) -> pd.DataFrame:
        """Every error row: id, stage, error_class, message, resolved (the record later succeeded)."""
        store = self._store()
        try:
            rows = store.errors()
        finally:
            store.close()
        return frame(rows, columns=["id", "stage", "error_class", "message", "resolved"])

    def calls(self) -> pd.DataFrame:
        """Every stored model call: key, role, model, tokens_in, tokens_out, tokens_cached and tokens_cache_write
        (parts of tokens_in read from / written to the provider's prompt cache), batch (made through a batch API),
        created, shared (taken from the shared call cache, not paid by this run), text, structured."""
        store = self._store()
        try:
            rows = [{"key": k, "role": r, "model": m, "tokens_in": ti, "tokens_out": to, "created": c,
                     "shared": bool(sh), **_reply_fields(json.loads(resp))}
                    for k, r, m, resp, ti, to, c, sh in store.read_calls()]
        finally:
            store.close()
        return frame(rows, columns=["key", "role", "model", "tokens_in", "tokens_out", "tokens_cached",
                                    "tokens_cache_write", "batch", "created", "shared", "text", "structured"])

    def stored_records(self) -> Iterator[dict[str, Any]]:
        """The stored records in input order, each with its steps (`Store.iter_records` dicts), from one
        read-only snapshot."""
        store = self._store()
        try:
            yield from store.iter_records()
        finally:
            store.close()

    def constitution(self) -> Constitution | None:
        """The run's constitution, loaded from where the run found it (None if it cannot be loaded now)."""
        store = self._store()
        try:
            meta = store.get_meta("constitution", {}) or {}
        finally:
            store.close()
        for source in (meta.get("specs"), meta.get("path"), meta.get("name")):
            if source:
                try:
                    return load_constitution(source)
                except CaiError:
                    continue
        return None

    # -- exploring (cai.explore) ----------------------------------------------------------
    def principle_stats(self) -> pd.DataFrame:
        """Per principle: tags, kind, layer, times sampled, violation rate, mean severity, unparsed, mean
        length change after revision and (with rewards) mean reward change. See `cai.explore`."""
        return explore.principle_stats(self)

    def rounds(self) -> pd.DataFrame:
        """Per round: violation rate, severity, unparsed, length and reward change: does the loop converge?"""
        return explore.rounds(self)

    def diff(self, record_id: str) -> explore.RecordDiff:
        """Draft → each revision of one record as word diffs (HTML in Jupyter, plain text elsewhere)."""
        return explore.diff(self, record_id)

    def grades(self) -> pd.DataFrame:
        """With rule-based rewards: one row per (record, step, proposition) with p_yes and method, one per check."""
        return explore.grades(self)

    def summary(self) -> pd.DataFrame:
        """The manifest's numbers as (metric, value) rows."""
        return explore.summary(self)

    def export(self, format: str = "jsonl", *, developer_as_system: bool | None = None) -> dict[str, Any]:
        """Rebuild the exports and manifest.json (files of the other format are removed); returns the manifest.
        Takes the run lock: RunLocked (exit 3) while another process writes the run."""
        if format not in ("jsonl", "parquet"):
            raise InputError(f"format must be jsonl or parquet, not {format!r}")
        from cai.runs import locked_store  # here: a Run that only reads leaves the run machinery unloaded

        with locked_store(self.path, create=False) as store:
            return export_run(store, format, developer_as_system=developer_as_system, extras=self.manifest_extras)

    def to_datasets(self) -> Any:
        """sft and pairs as a `datasets.DatasetDict` in TRL's conversational columns (see `cai.hf`); needs the
        'hf' extra. Reads only, like the tables."""
        from cai.hf import dataset_dict  # here: cai.hf loads pyarrow, which a Run leaves unloaded until asked

        return dataset_dict(self.path)
