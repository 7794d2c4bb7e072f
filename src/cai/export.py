"""Exports read only the store: sft, pairs, critiques (JSONL or Parquet) and manifest.json.

Shapes (TRL conversational):
  sft:       {"id", "messages": [*prompt, {"role": "assistant", "content": final}]}
  pairs:     {"id", "prompt": [*prompt], "chosen": [{"role": "assistant", "content": final}],
              "rejected": [{"role": "assistant", "content": draft}], "metadata": {...}}
  critiques: {"id", "round", "principle", "critique", "verdict", "parsed", "before", "after"}
A pair is written only if the final response is non-empty and differs from the draft. With --rbr, pairs
also carry "reward_chosen" and "reward_rejected" (rewards of the final response and of the draft), and
--min-reward-margin x drops pairs whose reward did not improve by x.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from cai.store import Store

EXPORTS = ("sft", "pairs", "critiques")


def draft_and_final(steps: list[dict[str, Any]]) -> tuple[str | None, str | None]:
    """A record's draft and its last revision (the draft when never revised)."""
    draft = next((s["response"] for s in steps if s["kind"] == "draft"), None)
    final = draft
    for s in steps:
        if s["kind"] == "revise":
            final = s["response"]
    return draft, final


def rewards_of(steps: list[dict[str, Any]]) -> dict[str, float] | None:
    """With --rbr: the final response's reward (chosen) and the draft's (rejected); else None."""
    grades = {s["round"]: s["score"]["reward"] for s in steps if s["kind"] == "grade"}
    if not grades:
        return None
    return {"reward_chosen": grades[max(grades)], "reward_rejected": grades[0]}


def record_rows(rec: dict[str, Any], min_margin: float | None = None
                ) -> tuple[dict | None, dict | None, list[dict], str | None]:
    """(sft row, pair row, critique rows, why the pair was dropped) for one finished record."""
    steps = rec["steps"]
    draft, final = draft_and_final(steps)
    if draft is None or final is None:
        return None, None, [], None
    crits: list[dict[str, Any]] = []
    pending: dict[int, dict[str, Any]] = {}
    for s in steps:
        if s["kind"] == "critique":
            row = {"id": rec["id"], "round": s["round"], "principle": s["principle"], "critique": s["critique"],
                   "verdict": s["verdict"], "parsed": s["parsed"], "before": s["response"], "after": s["response"]}
            pending[s["round"]] = row
            crits.append(row)
        elif s["kind"] == "revise" and s["round"] in pending:
            pending[s["round"]]["after"] = s["response"]
    prompt = rec["messages"]
    sft = {"id": rec["id"], "messages": [*prompt, {"role": "assistant", "content": final}]}
    dropped = "empty" if not final.strip() or not draft.strip() else ("unchanged" if final == draft else None)
    rewards = rewards_of(steps)
    if rewards and dropped is None and min_margin is not None and \
            rewards["reward_chosen"] - rewards["reward_rejected"] < min_margin:
        dropped = "margin"
    pair = None
    if dropped is None:
        pair = {"id": rec["id"], "prompt": prompt,
                "chosen": [{"role": "assistant", "content": final}],
                "rejected": [{"role": "assistant", "content": draft}],
                "metadata": {"principles": [c["principle"] for c in crits], "rounds": len(crits),
                             "violations": [bool(c["verdict"]["violates"]) if c["verdict"] else None
                                            for c in crits]}}
        if rewards:
            pair.update(rewards)
    return sft, pair, crits, dropped


class _Sink:
    """One export file, written to a temp file in the same folder and renamed on commit."""

    def __init__(self, path: Path, fmt: str) -> None:
        self.path, self.fmt, self.count = path, fmt, 0
        fd, self.tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        self.fh = os.fdopen(fd, "w", encoding="utf-8")
        self.rows: list[dict[str, Any]] = []  # parquet only: written whole on commit

    def add(self, row: dict[str, Any]) -> None:
        self.count += 1
        if self.fmt == "parquet":
            self.rows.append(row)
        else:
            self.fh.write(json.dumps(row, ensure_ascii=False) + "\n")

    def commit(self) -> None:
        self.fh.flush()
        os.fsync(self.fh.fileno())
        self.fh.close()
        if self.fmt == "parquet":
            import pandas as pd

            frame = pd.DataFrame(self.rows)
            for col in frame.columns:  # nested dicts/lists go in as JSON text for a stable schema
                if frame[col].map(lambda v: isinstance(v, (dict, list))).any():
                    frame[col] = frame[col].map(lambda v: json.dumps(v, ensure_ascii=False))
            frame.to_parquet(self.tmp, index=False)
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        self.fh.close()
        Path(self.tmp).unlink(missing_ok=True)


def write_json(path: Path, data: dict[str, Any]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=2, sort_keys=True)
        fh.write("\n")
    os.replace(tmp, path)


def export(store: Store, fmt: str = "jsonl") -> dict[str, int]:
    """Rebuild every export from the store in one pass; returns the counts, also kept in the manifest."""
    ext = "parquet" if fmt == "parquet" else "jsonl"
    sinks = {name: _Sink(store.run_dir / f"{name}.{ext}", fmt) for name in EXPORTS}
    dropped = {"unchanged": 0, "empty": 0, "margin": 0}
    margin = store.get_meta("settings", {}).get("min_reward_margin")
    rbr = {"graded": 0, "improved": 0}
    expected = 0
    try:
        for rec in store.iter_records():
            if rec["status"] != "done":
                continue
            expected += (rec["extra"] or {}).get("expected") in ("comply", "refuse")
            rewards = rewards_of(rec["steps"])
            if rewards:
                rbr["graded"] += 1
                rbr["improved"] += rewards["reward_chosen"] > rewards["reward_rejected"]
            sft, pair, crits, why = record_rows(rec, margin)
            if sft:
                sinks["sft"].add(sft)
            if pair:
                sinks["pairs"].add(pair)
            elif why:
                dropped[why] += 1
            for c in crits:
                sinks["critiques"].add(c)
        for sink in sinks.values():
            sink.commit()
    except BaseException:
        for sink in sinks.values():
            sink.abort()
        raise
    counts = {name: sink.count for name, sink in sinks.items()}
    counts.update({f"pairs_dropped_{k}": v for k, v in dropped.items()})
    counts["pairs_dropped"] = sum(dropped.values())
    if rbr["graded"]:
        counts["rbr_graded"], counts["rbr_improved"] = rbr["graded"], rbr["improved"]
    counts["with_expected"] = expected
    return counts


def manifest(store: Store, export_counts: dict[str, int]) -> dict[str, Any]:
    """manifest.json content: versions, models, settings, hashes, counts, tokens, wall time. No keys."""
    from cai import __version__

    statuses = store.counts()
    return {
        "cai_version": __version__,
        "models": store.get_meta("models", {}),
        "settings": store.get_meta("settings", {}),
        "seed": (store.get_meta("settings", {}).get("gen") or {}).get("seed"),
        "constitution": store.get_meta("constitution", {}),
        "input": store.get_meta("input", {}),
        "records": {"total": sum(statuses.values()), **statuses},
        "exports": export_counts,
        "tokens": store.token_totals(),
        "errors": store.error_count(),
        "wall_seconds": round(store.get_meta("wall_seconds", 0.0), 3),
    }


def export_run(store: Store, fmt: str = "jsonl") -> dict[str, Any]:
    counts = export(store, fmt)
    data = manifest(store, counts)
    if counts["with_expected"]:  # inputs with `expected: comply|refuse` get Not-Unsafe / Not-Overrefuse
        from cai.rbr.metrics import run_refusal_metrics

        data["refusal_metrics"] = run_refusal_metrics(store.run_dir)
    write_json(store.run_dir / "manifest.json", data)
    return data
