"""`Run`: a run folder read as pandas DataFrames (flat columns), its status and manifest, and its exports.

Reads open a read-only snapshot of `run.sqlite` per call: safe while another process writes the run,
no lock taken, nothing written. `export()` writes the exports under the run lock; `review()` and
`import_reviews()` write only people's decisions, to their own file (`cai.store.reviews`), without it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cai.calls import prompt_text
from cai.constitution import Constitution
from cai.constitution import load as load_constitution
from cai.errors import CaiError, InputError
from cai.read import explore, reviews
from cai.read.export import ManifestExtra, export_run, run_settings
from cai.read.rows import (
    LABEL_COLUMNS,
    LABELED_PAIR_COLUMNS,
    RecordRows,
    RowOptions,
    frame,
    labeled_run,
    record_rows,
    run_rows,
)
from cai.read.status import read_manifest, run_status
from cai.store import Store
from cai.store.steps import StoredRecord

if TYPE_CHECKING:
    import pandas as pd

    from cai.store.reviews import StoredDecision


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
        return read_manifest(self.path)

    def status(self) -> dict[str, Any]:
        """What `cai status --json` prints: counts that add up, tokens, errors, a live writer's pid."""
        return run_status(self.path)

    def record_rows(self, done_only: bool = False, developer_as_system: bool = False, reviews: str | None = None
                    ) -> Iterator[RecordRows]:
        """Each (done) record's rows (`cai.read.rows.RecordRows`: sft, pairs, critiques, labels, grades) as the exports
        make them, with the run's margins, from one pass over one read-only snapshot. `reviews` (apply, only or
        ignore; None: the run's setting) says what people's decisions do to the rows."""
        store = self._store()
        try:
            opts = RowOptions.of_run(store, run_settings(store), developer_as_system, reviews)
            yield from run_rows(store, opts, done_only)
        finally:
            store.close()

    def _labeled(self) -> bool:
        """Whether the run has AI preference labels."""
        store = self._store()
        try:
            return labeled_run(store, run_settings(store))
        finally:
            store.close()

    def records(self) -> pd.DataFrame:
        """One row per record: id, status, prompt (text), messages, draft, final, rounds, violations, the
        input's other fields (e.g. `expected`) as columns."""
        rows = []
        for r in self.record_rows():
            rec = r.record
            rows.append({"id": rec.id, "status": rec.status, "prompt": prompt_text(rec.messages),
                         "messages": rec.messages, "draft": r.draft, "final": r.final, "rounds": len(r.critiques),
                         "violations": sum(bool(c.step.verdict and c.step.verdict["violates"]) for c in r.critiques),
                         "pair_dropped": r.dropped,
                         "pair_quality": list(r.pair_verdict.flags) if r.pair_verdict else None,
                         "sft_quality": list(r.sft_verdict.flags) if r.sft_verdict else None})
            rows[-1].update({k: v for k, v in rec.extra.items() if k not in rows[-1]})
        return frame(rows, columns=None if rows else ["id", "status", "prompt", "messages", "draft", "final",
                                                      "rounds", "violations", "pair_dropped", "pair_quality",
                                                      "sft_quality"])

    def quality(self) -> pd.DataFrame:
        """The quality gate's verdict on every row it looked at, kept or not: id (a pair's or record's), part
        (pairs, sft or ai_label_pairs), flags, kept, and out (the reasons that kept it out, first one first);
        see docs/export.md."""
        rows = []
        for r in self.record_rows(done_only=True):
            found = [("pairs", r.record.id, r.pair_verdict), ("sft", r.record.id, r.sft_verdict)]
            found += [("ai_label_pairs", pid, v) for pid, v in (r.labels.verdicts if r.labels else [])]
            rows += [{"id": rid, "part": part, "flags": list(v.flags), "kept": v.kept, "out": list(v.out)}
                     for part, rid, v in found if v is not None]
        return frame(rows, columns=["id", "part", "flags", "kept", "out"])

    def critiques(self) -> pd.DataFrame:
        """One row per critique: id, round, principle, its layer and kind, critique, violates, severity,
        rule_override (None unless the constitution has rules or defaults), parsed, before, after."""
        rows = []
        for r in self.record_rows():
            for c in r.critique_rows:
                v = c["verdict"] or {}
                rows.append({"id": c["id"], "round": c["round"], "principle": c["principle"], "layer": c["layer"],
                             "kind": c["kind"], "critique": c["critique"], "violates": v.get("violates"),
                             "severity": v.get("severity"), "rule_override": c["rule_override"],
                             "parsed": c["parsed"], "before": c["before"], "after": c["after"]})
        return frame(rows, columns=["id", "round", "principle", "layer", "kind", "critique", "violates", "severity",
                                    "rule_override", "parsed", "before", "after"])

    def pairs(self, reviews: str | None = None) -> pd.DataFrame:
        """Preference pairs as exported (TRL message lists) plus flat text columns: prompt_text, chosen_text,
        rejected_text, principles, rounds, violations (and rewards with --rbr); source ("revision", "ai_label",
        "human" or "human_edit") and review (what people decided, else None). A run with AI preference labels
        also has its AI-labeled pairs, after each record's revision pair, and every pair has score_chosen,
        score_rejected and label (a dict for AI-labeled pairs, else None), as in pairs.jsonl. `reviews` (apply,
        only or ignore; None: the run's setting) says what people's decisions do to them (docs/review.md)."""
        rows = []
        for r in self.record_rows(done_only=True, reviews=reviews):
            for pair in r.pairs:
                meta = pair.get("metadata") or {}
                rows.append({**{k: v for k, v in pair.items() if k != "metadata"},
                             "prompt_text": prompt_text(pair["prompt"]), "chosen_text": pair["chosen"][0]["content"],
                             "rejected_text": pair["rejected"][0]["content"], **meta})
        if rows:
            return frame(rows, columns=None)
        columns = ["id", "prompt", "chosen", "rejected", "quality", "source", "review", "prompt_text", "chosen_text",
                   "rejected_text"]
        return frame([], columns=columns + (LABELED_PAIR_COLUMNS if self._labeled() else []))

    def labels(self) -> pd.DataFrame:
        """AI preference labels: one row per comparison of two candidates of a done record, as in labels.jsonl:
        id, a, b (candidate indices), source_a, source_b, response_a, response_b, principle, p_ab (P(A) with a
        shown as (A)), p_ba (P(A) with b shown as (A)), p (P(a ≻ b) = (p_ab + 1 − p_ba) / 2), method, judge.
        Empty (with these columns) for a run without labels."""
        rows = [row for r in self.record_rows(done_only=True) if r.labels for row in r.labels.comparisons]
        return frame(rows, columns=LABEL_COLUMNS)

    def sft(self, developer_as_system: bool = False, reviews: str | None = None) -> pd.DataFrame:
        """SFT rows as exported (`messages`, `quality`) plus prompt_text and completion (the final response, or
        the answer people preferred: see `pairs` for `reviews`)."""
        rows = []
        for r in self.record_rows(done_only=True, developer_as_system=developer_as_system, reviews=reviews):
            if r.sft is None:
                continue
            msgs = r.sft["messages"]
            rows.append({"id": r.sft["id"], "messages": msgs, "quality": r.sft["quality"],
                         "prompt_text": prompt_text(msgs[:-1]), "completion": msgs[-1]["content"]})
        return frame(rows, columns=["id", "messages", "quality", "prompt_text", "completion"])

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

    def stored_records(self) -> Iterator[StoredRecord]:
        """The stored records in input order, each with its steps (`cai.store.steps.StoredRecord`), from one
        read-only snapshot."""
        store = self._store()
        try:
            yield from store.iter_records()
        finally:
            store.close()

    def stored_record(self, record_id: str) -> StoredRecord | None:
        """One stored record with its steps (None if the run has no such record)."""
        store = self._store()
        try:
            return store.record(record_id)
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

    # -- people's review decisions (cai.read.reviews, docs/review.md) --------------------------
    def reviews(self) -> pd.DataFrame:
        """Every review decision, oldest first: id, item (critique or pair), round (critiques), pair (an AI-labeled
        pair's id), decision, reviewer, edit, note, time (UTC) and stale (about text the run no longer has)."""
        return reviews.reviews_frame(self.path, reviews.Items(self.record_rows(reviews="ignore")))

    def review(self, id: str, decision: str, *, reviewer: str, round: int | None = None, pair: str | None = None,
               edit: str | None = None, note: str | None = None) -> StoredDecision:
        """Record one decision (it replaces the reviewer's earlier one on the item) and return it as stored. No run
        lock: fine while the run is being written. InputError for an unknown record, round or pair, or a decision
        not for the item."""
        from cai.store.reviews import ReviewStore

        rows = self.rows_of(id)
        items = reviews.Items([] if rows is None else [rows])
        d = reviews.decide(items, id=id, item="critique" if round is not None else "pair", round=round, pair=pair,
                           decision=decision, reviewer=reviewer, edit=edit, note=note)
        with ReviewStore(self.path) as store:
            store.save([d])
        return d

    def import_reviews(self, path: str | os.PathLike[str]) -> int:
        """Store the decisions of a JSONL file (docs/review.md), all or none: every line is checked first
        (InputError naming the file and line). The number of decisions added or changed (0 the second time)."""
        from cai.store.reviews import ReviewStore

        decisions = reviews.read_jsonl(Path(path), reviews.Items(self.record_rows(reviews="ignore")))
        with ReviewStore(self.path) as store:
            return store.save(decisions)

    def review_stats(self) -> dict[str, Any]:
        """How far people agree with the critic, the judge and each other (what `cai review stats --json` prints;
        docs/review_stats.md), from the current decisions, against the pairs as the models made them."""
        inputs = reviews.StatsInputs()
        for r in self.record_rows(reviews="ignore"):
            inputs.add(r)
        return inputs.stats(self.path)

    def export_reviews(self, path: str | os.PathLike[str]) -> int:
        """Write every decision to a JSONL file (docs/review.md); the number written."""
        from cai.read.export import write_file
        from cai.store.reviews import ReviewStore

        with ReviewStore(self.path, readonly=True) as store:
            lines = [json.dumps(reviews.to_json(d), ensure_ascii=False) + "\n" for d in store.decisions()]
        write_file(Path(path), "".join(lines).encode("utf-8"), "review decisions")
        return len(lines)

    def rows_of(self, record_id: str) -> RecordRows | None:
        """The rows of one record as the models made them, people's decisions not applied (None if the run has no
        such record): one record read, for a view of one record in a large run (the review page)."""
        store = self._store()
        try:
            rec = store.record(record_id)
            opts = RowOptions.of_run(store, run_settings(store), reviews="ignore", count_reviews=False)
            return None if rec is None else record_rows(rec, opts)
        finally:
            store.close()

    # -- exploring (cai.read.explore) ----------------------------------------------------------
    def principle_stats(self) -> pd.DataFrame:
        """Per principle: tags, kind, layer, times sampled, violation rate, mean severity, unparsed, mean
        length change after revision and (with rewards) mean reward change. See `cai.read.explore`."""
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

    def export(self, format: str = "jsonl", *, developer_as_system: bool | None = None, reviews: str | None = None,
               review_policy: str | None = None) -> dict[str, Any]:
        """Rebuild the exports and manifest.json (files of the other format are removed); returns the manifest.
        `reviews` (apply, only, ignore) and `review_policy` (majority, unanimous, latest): what people's decisions
        do (None: the run's settings; docs/review.md). Takes the run lock: RunLocked (exit 3) while another
        process writes the run."""
        if format not in ("jsonl", "parquet"):
            raise InputError(f"format must be jsonl or parquet, not {format!r}")
        from cai.read.decisions import MODES, POLICIES
        from cai.store.folder import locked_store

        for name, value, allowed in (("reviews", reviews, MODES), ("review_policy", review_policy, POLICIES)):
            if value is not None and value not in allowed:
                raise InputError(f"{name} must be one of {', '.join(allowed)}, not {value!r}")
        with locked_store(self.path, create=False) as store:
            return export_run(store, format, developer_as_system=developer_as_system, extras=self.manifest_extras,
                              reviews=reviews, review_policy=review_policy)

    def to_datasets(self) -> Any:
        """sft and pairs as a `datasets.DatasetDict` in TRL's conversational columns (see `cai.read.hf`); needs the
        'hf' extra. Reads only, like the tables."""
        from cai.read.hf import dataset_dict  # here: cai.read.hf loads pyarrow, which a Run leaves unloaded until asked

        return dataset_dict(self.path)
