"""Exports read only the store: sft, pairs, critiques (JSONL or Parquet) and manifest.json.

Shapes (TRL conversational):
  sft:       {"id", "messages": [*prompt, {"role": "assistant", "content": final}]}
  pairs:     {"id", "prompt": [*prompt], "chosen": [{"role": "assistant", "content": final}],
              "rejected": [{"role": "assistant", "content": draft}], "metadata": {...}}
  critiques: {"id", "round", "principle", "critique", "verdict", "parsed", "before", "after"}
A pair is written only if the final response is non-empty and differs from the draft.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from cai.store import Store

EXPORTS = ("sft", "pairs", "critiques")


def record_rows(rec: dict[str, Any]) -> tuple[dict | None, dict | None, list[dict], str | None]:
    """(sft row, pair row, critique rows, why the pair was dropped) for one finished record."""
    steps = rec["steps"]
    draft = next((s["response"] for s in steps if s["kind"] == "draft"), None)
    if draft is None:
        return None, None, [], None
    final = draft
    crits: list[dict[str, Any]] = []
    pending: dict[int, dict[str, Any]] = {}
    for s in steps:
        if s["kind"] == "critique":
            row = {"id": rec["id"], "round": s["round"], "principle": s["principle"], "critique": s["critique"],
                   "verdict": s["verdict"], "parsed": s["parsed"], "before": s["response"], "after": s["response"]}
            pending[s["round"]] = row
            crits.append(row)
        elif s["kind"] == "revise":
            final = s["response"]
            if s["round"] in pending:
                pending[s["round"]]["after"] = final
    prompt = rec["messages"]
    sft = {"id": rec["id"], "messages": [*prompt, {"role": "assistant", "content": final}]}
    dropped = "empty" if not final.strip() or not draft.strip() else ("unchanged" if final == draft else None)
    pair = None
    if dropped is None:
        pair = {"id": rec["id"], "prompt": prompt,
                "chosen": [{"role": "assistant", "content": final}],
                "rejected": [{"role": "assistant", "content": draft}],
                "metadata": {"principles": [c["principle"] for c in crits], "rounds": len(crits),
                             "violations": [bool(c["verdict"]["violates"]) if c["verdict"] else None
                                            for c in crits]}}
    return sft, pair, crits, dropped


def _atomic_write(path: Path, rows: Iterable[dict[str, Any]], fmt: str) -> int:
    """Write rows to a temp file in the same folder, then rename: readers never see half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    n = 0
    try:
        if fmt == "parquet":
            import pandas as pd

            os.close(fd)
            data = list(rows)
            n = len(data)
            frame = pd.DataFrame(data)
            for col in frame.columns:  # nested dicts/lists go in as JSON text for a stable schema
                if frame[col].map(lambda v: isinstance(v, (dict, list))).any():
                    frame[col] = frame[col].map(lambda v: json.dumps(v, ensure_ascii=False))
            frame.to_parquet(tmp, index=False)
        else:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                for row in rows:
                    fh.write(json.dumps(row, ensure_ascii=False) + "\n")
                    n += 1
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return n


def write_json(path: Path, data: dict[str, Any]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=2, sort_keys=True)
        fh.write("\n")
    os.replace(tmp, path)


def _finished(store: Store) -> Iterator[dict[str, Any]]:
    for rec in store.iter_records():
        if rec["status"] == "done":
            yield rec


def export(store: Store, fmt: str = "jsonl") -> dict[str, int]:
    """Rebuild every export from the store; returns the counts, also kept in the manifest."""
    ext = "parquet" if fmt == "parquet" else "jsonl"
    counts = {"sft": 0, "pairs": 0, "critiques": 0, "pairs_dropped_unchanged": 0, "pairs_dropped_empty": 0}
    for name in EXPORTS:
        def rows(name: str = name) -> Iterator[dict[str, Any]]:
            for rec in _finished(store):
                sft, pair, crits, dropped = record_rows(rec)
                if name == "sft" and sft:
                    yield sft
                elif name == "pairs":
                    if pair:
                        yield pair
                    elif dropped:
                        counts[f"pairs_dropped_{dropped}"] += 1
                elif name == "critiques":
                    yield from crits
        counts[name] = _atomic_write(store.run_dir / f"{name}.{ext}", rows(), fmt)
    counts["pairs_dropped"] = counts["pairs_dropped_unchanged"] + counts["pairs_dropped_empty"]
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
        "errors": len(store.errors()),
        "wall_seconds": round(store.get_meta("wall_seconds", 0.0), 3),
    }


def export_run(store: Store, fmt: str = "jsonl") -> dict[str, Any]:
    counts = export(store, fmt)
    data = manifest(store, counts)
    write_json(store.run_dir / "manifest.json", data)
    return data
