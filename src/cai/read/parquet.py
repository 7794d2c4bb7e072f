"""Parquet exports: one fixed pyarrow schema per export, rows streamed to a ParquetWriter in row groups.

Columns are real nested types, so `pandas.read_parquet` and `datasets.load_dataset("parquet", ...)` give
lists of {"role", "content"} dicts, as TRL expects. The schema depends only on the export and on whether
the run used rule-based rewards, so every file of a run has the same columns (an empty file included).
"""

from __future__ import annotations

from typing import IO, Any

import pyarrow as pa
import pyarrow.parquet as pq

from cai.read.rows import columns

ROWS_PER_GROUP = 1000  # rows buffered before they are written out as one row group

MESSAGES = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
METADATA = pa.struct([("principles", pa.list_(pa.string())), ("rounds", pa.int64()),
                      ("violations", pa.list_(pa.bool_()))])
LABEL = pa.struct([("principle", pa.string()), ("p_chosen_first", pa.float64()), ("p_chosen_second", pa.float64()),
                   ("margin", pa.float64()), ("rank_by", pa.string()), ("method", pa.string()),
                   ("judge", pa.string())])
FLAGS = pa.list_(pa.string())  # a row's quality flags (`cai.read.quality`)
REVIEW = pa.struct([("decision", pa.string()), ("reviewers", pa.int64())])  # what people decided (cai.read.decisions)
VERDICT = pa.struct([("critique", pa.string()), ("violates", pa.bool_()), ("severity", pa.int64())])


#: every export column's type (the columns themselves, and their order, are `cai.read.rows.columns`)
TYPES = {
    "sft": {"id": pa.string(), "messages": MESSAGES, "quality": FLAGS},
    "pairs": {"id": pa.string(), "prompt": MESSAGES, "chosen": MESSAGES, "rejected": MESSAGES, "metadata": METADATA,
              "quality": FLAGS, "source": pa.string(), "review": REVIEW,
              "reward_chosen": pa.float64(), "reward_rejected": pa.float64(), "score_chosen": pa.float64(),
              "score_rejected": pa.float64(), "label": LABEL},
    "labels": {"id": pa.string(), "a": pa.int64(), "b": pa.int64(), "source_a": pa.string(), "source_b": pa.string(),
               "response_a": pa.string(), "response_b": pa.string(), "principle": pa.string(), "p_ab": pa.float64(),
               "p_ba": pa.float64(), "p": pa.float64(), "method": pa.string(), "judge": pa.string()},
    "critiques": {"id": pa.string(), "round": pa.int64(), "principle": pa.string(), "layer": pa.string(),
                  "kind": pa.string(), "critique": pa.string(), "verdict": VERDICT, "parsed": pa.bool_(),
                  "rule_override": pa.bool_(), "before": pa.string(), "after": pa.string()},
}


def schema(export: str, rewards: bool = False, labels: bool = False) -> pa.Schema:
    """The columns of `export` (sft, pairs, critiques or labels; `cai.read.rows.columns`) with their types; `rewards`
    adds the pairs' reward columns, `labels` (a run with AI preference labels) their score, source and label
    columns."""
    types = TYPES[export] if export in TYPES else {}
    return pa.schema([(name, types[name]) for name in columns(export, rewards, labels)])


class ParquetRows:
    """Rows written to an open binary file as Parquet, `ROWS_PER_GROUP` at a time; the file stays open."""

    def __init__(self, fh: IO[bytes], schema: pa.Schema) -> None:
        self.schema = schema
        self.writer = pq.ParquetWriter(fh, schema)
        self.rows: list[dict[str, Any]] = []

    def add(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        if len(self.rows) >= ROWS_PER_GROUP:
            self._write()

    def _write(self) -> None:
        if self.rows:
            batch, self.rows = self.rows, []
            self.writer.write_table(pa.Table.from_pylist(batch, schema=self.schema))

    def close(self) -> None:
        """Write the buffered rows and the footer."""
        self._write()
        self.writer.close()

    def discard(self) -> None:
        """Drop the buffered rows and close the writer (the file is about to be deleted)."""
        self.rows = []
        self.writer.close()
