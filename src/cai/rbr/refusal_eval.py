"""Refusal classification against people's labels: `cai rbr refusal-eval`'s rows and figures.

A labelled row is `{prompt, completion, label}` with `label` one of `cai.scoring.refusal.LABELS` (optional `id`,
`source_model`, `type`). Binary figures count a refusal as full or partial refusal (the positive class);
three-way figures compare the labels themselves. Undefined ratios (nothing predicted positive, no positive
label) are None.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from cai.calls import prompt_text
from cai.core.records import iter_jsonl
from cai.errors import InputError
from cai.rbr.data import parse_row
from cai.scoring.refusal import FULL_COMPLIANCE, LABELS, PARTIAL_REFUSAL, classify, explain


def read_labelled(path: Path, limit: int | None = None) -> list[dict[str, Any]]:
    """Rows of a labelled file, validated in full (InputError naming file and line)."""
    if path.is_dir():
        raise InputError("refusal-eval needs a JSONL file, not a folder", path=str(path))
    if not path.is_file():
        raise InputError("file not found", path=str(path))
    rows = []
    for n, obj in iter_jsonl(path):
        label = obj.get("label")
        if label not in LABELS:
            raise InputError(f"`label` must be one of {', '.join(LABELS)} (got {label!r})", path=str(path), line=n)
        for key in ("source_model", "type"):
            if obj.get(key) is not None and not isinstance(obj[key], str):
                raise InputError(f"`{key}` must be a string", path=str(path), line=n)
        row = parse_row(obj, str(path), n)
        row.update(label=label, source_model=obj.get("source_model"), type=obj.get("type"))
        rows.append(row)
    if not rows:
        raise InputError("no rows", path=str(path))
    return rows[:limit] if limit else rows


def classify_rows(rows: list[dict[str, Any]]) -> list[str]:
    """The refusal classifier's label for each row (`prompt` its chat messages, `response` the reply)."""
    return [classify(r["response"], prompt_text(r["prompt"])) for r in rows]


def _ratio(a: int, b: int) -> float | None:
    return a / b if b else None


def binary(gold: list[str], pred: list[str]) -> dict[str, Any]:
    """Accuracy, precision and recall of "refuses" (full or partial) against "complies", and
    `partial_recall`: the share of partial refusals counted as refusals."""
    g = [x != FULL_COMPLIANCE for x in gold]
    p = [x != FULL_COMPLIANCE for x in pred]
    tp = sum(a and b for a, b in zip(g, p))
    partial = [b for a, b in zip(gold, p) if a == PARTIAL_REFUSAL]
    return {"n": len(g), "accuracy": _ratio(sum(a == b for a, b in zip(g, p)), len(g)),
            "precision": _ratio(tp, sum(p)), "recall": _ratio(tp, sum(g)),
            "partial_recall": _ratio(sum(partial), len(partial))}


def three_way(gold: list[str], pred: list[str]) -> dict[str, Any]:
    """Accuracy, macro-F1 over the classes present in gold or predictions, per-class recall, confusion."""
    confusion = {g: {p: 0 for p in LABELS} for g in LABELS}
    for a, b in zip(gold, pred):
        confusion[a][b] += 1
    f1s, recall = [], {}
    for c in LABELS:
        tp = confusion[c][c]
        n_gold, n_pred = sum(confusion[c].values()), sum(confusion[g][c] for g in LABELS)
        recall[c] = _ratio(tp, n_gold)
        if n_gold or n_pred:
            f1s.append(2 * tp / (n_gold + n_pred))
    return {"n": len(gold), "accuracy": _ratio(sum(a == b for a, b in zip(gold, pred)), len(gold)),
            "macro_f1": sum(f1s) / len(f1s) if f1s else None, "recall": recall, "confusion": confusion}


def _group(gold: list[str], pred: list[str], ix: list[int]) -> dict[str, Any]:
    g, p = [gold[i] for i in ix], [pred[i] for i in ix]
    return {"n": len(ix), "binary_accuracy": binary(g, p)["accuracy"],
            "three_way_accuracy": three_way(g, p)["accuracy"]}


def evaluate(rows: list[dict[str, Any]], pred: list[str]) -> dict[str, Any]:
    """Binary and three-way figures, plus accuracy per `source_model` and per `type` where rows carry them."""
    gold = [r["label"] for r in rows]
    out: dict[str, Any] = {"rows": len(rows), "binary": binary(gold, pred), "three_way": three_way(gold, pred),
                           "predicted": dict(Counter(pred))}
    for key in ("source_model", "type"):
        groups: dict[str, list[int]] = {}
        for i, r in enumerate(rows):
            if r.get(key) is not None:
                groups.setdefault(r[key], []).append(i)
        if groups:
            out[f"per_{key}"] = {name: _group(gold, pred, ix) for name, ix in sorted(groups.items())}
    return out


def predictions(rows: list[dict[str, Any]], pred: list[str],
                readings: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Each row as `{id, prompt, completion, label, predicted, correct, source_model, type}` plus, for the
    classifier, `sentences` [{tag, text}] (its reasons) or, for the grader, its `probs` and `score`."""
    out = []
    for i, (r, p) in enumerate(zip(rows, pred)):
        prompt = prompt_text(r["prompt"])
        row = {"id": r["id"], "prompt": prompt, "completion": r["response"], "label": r["label"], "predicted": p,
               "correct": p == r["label"], "source_model": r.get("source_model"), "type": r.get("type")}
        if readings is None:
            row["sentences"] = [{"tag": s.tag, "text": s.text} for s in explain(r["response"], prompt)]
        else:
            row.update(probs=readings[i]["probs"], score=readings[i]["score"])
        out.append(row)
    return out


def _f(x: Any) -> str:
    return "-" if x is None else f"{x:.3f}" if isinstance(x, float) else str(x)


def report_lines(result: dict[str, Any]) -> list[str]:
    """The human-readable report of `evaluate`'s result."""
    b, t = result["binary"], result["three_way"]
    short = {"full_compliance": "compliance", "full_refusal": "refusal", "partial_refusal": "partial"}
    lines = [f"{result['rows']} rows; refusal decided by {result['method']}",
             f"binary (refusal = full or partial): accuracy {_f(b['accuracy'])}  precision {_f(b['precision'])}"
             f"  recall {_f(b['recall'])}  (of partial refusals {_f(b['partial_recall'])})",
             f"three-way: accuracy {_f(t['accuracy'])}  macro-F1 {_f(t['macro_f1'])}  recall "
             + "  ".join(f"{short[c]} {_f(t['recall'][c])}" for c in LABELS),
             "confusion (rows: label, columns: predicted):",
             f"  {'':<16}" + "".join(f"{short[c]:>12}" for c in LABELS)]
    lines += [f"  {g:<16}" + "".join(f"{t['confusion'][g][p]:>12}" for p in LABELS) for g in LABELS]
    for key in ("source_model", "type"):
        for name, m in (result.get(f"per_{key}") or {}).items():
            lines.append(f"{key} {name}: n {m['n']}  binary accuracy {_f(m['binary_accuracy'])}  three-way "
                         f"accuracy {_f(m['three_way_accuracy'])}")
    return lines
