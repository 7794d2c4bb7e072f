"""Exports read only the store: sft, pairs, critiques (JSONL or Parquet) and manifest.json.

Shapes (TRL conversational):
  sft:       {"id", "messages": [*prompt, {"role": "assistant", "content": final}]}
  pairs:     {"id", "prompt": [*prompt], "chosen": [{"role": "assistant", "content": final}],
              "rejected": [{"role": "assistant", "content": draft}], "metadata": {...}}
  critiques: {"id", "round", "principle", "layer", "kind", "critique", "verdict", "parsed", "rule_override",
              "before", "after"}  (layer: the constitution layer of the principle; kind: objective | rule |
              default | None; rule_override: under a constitution with rules or defaults, whether the critic found
              an attempt to override a rule, else None)
A pair is written only if the final response is non-empty and differs from the draft. With --rbr, pairs
also carry "reward_chosen" and "reward_rejected" (rewards of the final response and of the draft), and
--min-reward-margin x drops pairs whose reward did not improve by x. Parquet files hold the same rows in
nested columns with a fixed schema per run (see cai.read.parquet and docs/export.md).

`developer_as_system` (export() and export_run(); None means the run's `system_role_for_developer` setting,
default False) writes `developer` turns as `system` turns in sft `messages` and pairs `prompt`, since most
chat templates reject a developer role.

Files: each export is written to a temp file next to it (`.NAME.XXXXXXXX.tmp`), created with mode 0o666 so
that the kernel applies the umask (or the folder's default ACL) as for any new file: nothing reads or sets
the process umask, which would race other threads. The temp files are fsynced and renamed over the exports
only once all of them are complete; then the exports of the other format are deleted. An export first
deletes the temp files a killed export left behind. On any failure every temp file is closed and deleted,
and an OSError (disk full, read-only, I/O error) becomes one OutputError naming the file (exit 2).
"""

from __future__ import annotations

import importlib
import json
import os
import secrets
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from cai import __version__
from cai.core.budget import run_cost
from cai.core.prices import load_prices
from cai.errors import InputError, OutputError
from cai.read.decisions import ReviewTally
from cai.read.quality import Tally
from cai.read.rows import DROP_REASONS, RowOptions, reward_pair, run_rows
from cai.settings import IOSettings, RunSettings
from cai.store import Store

if TYPE_CHECKING:
    import pyarrow as pa

    from cai.read import parquet

EXPORTS = ("sft", "pairs", "critiques")
LABELS = "labels"  # every comparison of a run with AI preference labels (`labels.jsonl`)
FORMATS = ("jsonl", "parquet")
#: A plugin's manifest section: (store, export counts) → keys to add to manifest.json ({} for none).
ManifestExtra = Callable[[Store, dict[str, int]], dict[str, Any]]


def _cannot_write(path: Path, e: OSError, what: str = "export") -> OutputError:
    """One line for an OSError while writing `path` (pyarrow's own messages are long: use the errno's text)."""
    return OutputError(f"cannot write {what}: {os.strerror(e.errno) if e.errno else e}", path=str(path))


@contextmanager
def writing(path: Path, what: str = "export") -> Iterator[None]:
    """Turn an OSError raised inside into OutputError naming `path` ("cannot write <what>: ..."), chained."""
    try:
        yield
    except OSError as e:
        raise _cannot_write(path, e, what) from e


def temp_file(path: Path) -> tuple[int, Path]:
    """A new empty `.NAME.XXXXXXXX.tmp` next to `path`, mode 0o666 less the umask; (fd, its path)."""
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666), tmp
        except FileExistsError:
            continue


def _parquet() -> ModuleType:
    """`cai.read.parquet`, imported on first use: pyarrow adds ~50 MB of RSS that JSONL runs never need."""
    return importlib.import_module("cai.read.parquet")


class Sink:
    """One export file: rows go to a temp file next to it; `finish` makes it durable, `commit` renames it.
    With `keep_empty=False` a sink that got no row commits by deleting the file instead (and its temp file)."""

    def __init__(self, path: Path, schema: pa.Schema | None = None, *, keep_empty: bool = True) -> None:
        self.path, self.count, self.keep_empty = path, 0, keep_empty
        with writing(path):
            fd, self.tmp = temp_file(path)
        self.fh = os.fdopen(fd, "wb") if schema is not None else os.fdopen(fd, "w", encoding="utf-8")
        self.rows: parquet.ParquetRows | None = None
        if schema is not None:
            try:
                with writing(path):
                    self.rows = _parquet().ParquetRows(self.fh, schema)
            except BaseException:
                self.abort()
                raise

    def add(self, row: dict[str, Any]) -> None:
        try:
            if self.rows is None:
                self.fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            else:
                self.rows.add(row)
        except OSError as e:
            raise _cannot_write(self.path, e) from e
        self.count += 1

    def write(self, text: str) -> None:
        """Text as it is (a file that is not rows, e.g. a dataset card); not counted as a row."""
        with writing(self.path):
            self.fh.write(text)

    def finish(self) -> None:
        """Write what is buffered, fsync and close the temp file."""
        with writing(self.path):
            if self.rows is not None:
                self.rows.close()
            self.fh.flush()
            os.fsync(self.fh.fileno())
            self.fh.close()

    def commit(self) -> None:
        with writing(self.path):
            if self.count or self.keep_empty:
                os.replace(self.tmp, self.path)
            else:  # an older file would be stale
                self.tmp.unlink(missing_ok=True)
                self.path.unlink(missing_ok=True)

    def abort(self) -> None:
        """Close and delete the temp file, whatever fails on the way: the export's own error is the one raised."""
        if self.rows is not None:
            with suppress(Exception):
                self.rows.discard()
        with suppress(Exception):
            self.fh.close()
        with suppress(OSError):
            self.tmp.unlink(missing_ok=True)


@contextmanager
def all_or_none(sinks: dict[str, Sink]) -> Iterator[dict[str, Sink]]:
    """Fill `sinks` (it may gain sinks inside the block); on leaving, every file is made durable, then every one
    is renamed into place. On an error every temp file is deleted and no file of the set is replaced."""
    try:
        yield sinks
        for sink in sinks.values():
            sink.finish()
        for sink in sinks.values():
            sink.commit()
    except BaseException:
        for sink in sinks.values():
            sink.abort()
        raise


def write_file(path: Path, data: bytes, what: str = "export") -> None:
    """`data` through a temp file (mode 0o666 less the umask) renamed over `path`: a reader never sees half a
    file, and a failure leaves no temp file. OSError → OutputError naming `path` and `what` it is."""
    with writing(path, what):
        fd, tmp = temp_file(path)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, path)
        except BaseException:
            with suppress(OSError):
                tmp.unlink(missing_ok=True)
            raise


def write_json(path: Path, data: dict[str, Any]) -> None:
    """`data` as indented JSON, written as `write_file` does."""
    write_file(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode("utf-8"))


def sweep(run_dir: Path, names: Sequence[str] | None = None) -> None:
    """Delete the temp files that a write killed mid-way left in `run_dir` for the files `names` (default: the
    exports and manifest.json)."""
    if names is None:
        names = [f"{e}.{ext}" for e in (*EXPORTS, LABELS) for ext in FORMATS] + ["manifest.json"]
    for name in names:
        for tmp in run_dir.glob(f".{name}.*.tmp"):
            with writing(tmp):
                tmp.unlink(missing_ok=True)


def drop_counts(tally: Tally) -> dict[str, int]:
    """The manifest's `pairs_dropped_<reason>` counts of revision pairs (each kept out under its first reason,
    from the quality gate's `tally`) and their sum `pairs_dropped`; the same for sft rows (`sft_dropped_<flag>`
    where non-zero, and `sft_dropped`)."""
    pairs, sft = tally.dropped["pairs"], tally.dropped["sft"]
    counts = {f"pairs_dropped_{k}": pairs[k] for k in DROP_REASONS}
    counts["pairs_dropped"] = sum(counts.values())
    counts.update({f"sft_dropped_{k}": n for k, n in sft.items() if n})
    counts["sft_dropped"] = sum(sft.values())
    return counts


def export(store: Store, fmt: str = "jsonl", *, developer_as_system: bool | None = None,
           tally: Tally | None = None, reviews: str | None = None, review_policy: str | None = None,
           reviewed: dict[str, Any] | None = None) -> dict[str, int]:
    """Rebuild every export from the store in one pass; returns the counts, also kept in the manifest.
    `tally`, if given, gets the quality gate's counts of every row; `reviewed`, if given, the manifest's
    `reviews` section (what people's decisions did, under `reviews` and `review_policy`: None for the run's)."""
    settings = run_settings(store)
    opts = RowOptions.of_run(store, settings, developer_as_system, reviews, review_policy)
    tally = tally if tally is not None else Tally(opts.quality_gate)
    review_tally = ReviewTally(opts.reviews.mode, opts.reviews.policy)
    ext = "parquet" if fmt == "parquet" else "jsonl"
    sweep(store.run_dir)
    sinks: dict[str, Sink] = {}
    rbr = {"graded": 0, "improved": 0}
    labeled = Counter({"pairs_ai_label": 0, "label_near_ties": 0})
    expected = 0
    names = (*EXPORTS, LABELS) if opts.labels else EXPORTS
    with all_or_none(sinks):
        for name in names:
            schema = _parquet().schema(name, rewards=settings.scoring is not None,
                                       labels=opts.labels is not None) if ext == "parquet" else None
            sinks[name] = Sink(store.run_dir / f"{name}.{ext}", schema)
        for rows in run_rows(store, opts):
            expected += (rows.record.extra or {}).get("expected") in ("comply", "refuse")
            rewards = reward_pair(rows.rewards)
            if rewards:
                rbr["graded"] += 1
                rbr["improved"] += rewards["reward_chosen"] > rewards["reward_rejected"]
            if rows.sft:
                sinks["sft"].add(rows.sft)
            rows.tally(tally, review_tally)
            for c in rows.critique_rows:
                sinks["critiques"].add(c)
            for row in rows.pairs:
                sinks["pairs"].add(row)
            if rows.labels is not None:
                for row in rows.labels.comparisons:
                    sinks[LABELS].add(row)
                labeled["pairs_ai_label"] += len(rows.labels.pairs)
                labeled["label_near_ties"] += rows.labels.near_ties
    for name in (*EXPORTS, LABELS):  # only now that the new files are in place
        for stale in (store.run_dir / f"{name}.{other}" for other in FORMATS if other != ext):
            with writing(stale):
                stale.unlink(missing_ok=True)
    counts = {name: sink.count for name, sink in sinks.items()}
    counts.update(drop_counts(tally))
    if rbr["graded"]:
        counts["rbr_graded"], counts["rbr_improved"] = rbr["graded"], rbr["improved"]
    counts["with_expected"] = expected
    if opts.labels:
        counts.update(labeled)
    if reviewed is not None:
        reviewed.update(review_tally.summary(opts.reviews))
    return counts


def run_settings(store: Store) -> RunSettings:
    """The settings the run stored (as the last invocation gave them); the defaults for a store without."""
    data = store.get_meta("settings")
    return RunSettings.from_stored(data) if data else RunSettings(io=IOSettings(input="", out=str(store.run_dir)))


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, tz=UTC).isoformat(timespec="seconds")


def estimated_cost(store: Store, settings: RunSettings) -> float | None:
    """USD for every call the run paid for, by the price of each role's model (`cai.core.prices.call_rates`: cached
    and cache-write prompt tokens at their prices, batch calls at the batch price); None if a price is unknown."""
    try:
        prices = load_prices(settings.execution.prices)
    except InputError:  # the table was checked when the run started; it may have moved since
        return None
    total = run_cost(store, prices)
    return None if total is None else round(total, 6)


def budget_info(store: Store, settings: RunSettings) -> dict[str, Any] | None:
    """The manifest's `budget` (None for a run without `--max-cost`): the limit, what the run spent (its
    stored calls and the worst case of calls a kill cut off: `lost_usd`) and what calls in flight have set
    aside (`reserved_usd`), in USD."""
    limit, lost = settings.execution.max_cost, store.lost_usd()
    if limit is None and not lost:
        return None
    paid = estimated_cost(store, settings)
    return {"max_cost_usd": limit, "spent_usd": None if paid is None else round(paid + lost, 6),
            "lost_usd": round(lost, 6), "reserved_usd": round(store.held_usd(), 6)}


def manifest(store: Store, export_counts: dict[str, int], quality: dict[str, Any] | None = None,
             reviews: dict[str, Any] | None = None) -> dict[str, Any]:
    """manifest.json content: versions, models and their endpoints (`model_files`: the file and sha256 of each
    model loaded from a file), settings, hashes, counts, the quality gate's counts (`quality`, see
    `cai.read.quality.Tally.summary`), what people's review decisions did (`reviews`, see
    `cai.read.decisions.ReviewTally.summary`), tokens, cost, open errors, unparsed verdicts, start/end time and
    wall time (killed invocations included). No keys."""
    statuses = store.counts()
    settings = run_settings(store)
    invocations = store.invocations()
    wall = store.get_meta("wall_seconds", 0.0) + sum(i["ended"] - i["started"] for i in invocations)
    return {
        "cai_version": __version__,
        "models": store.get_meta("models", {}),
        "base_urls": store.get_meta("base_urls", {}),
        **({"model_files": files} if (files := store.get_meta("model_files", {})) else {}),
        "settings": settings.model_dump(),
        "seed": settings.generation.seed,
        "constitution": store.get_meta("constitution", {}),
        "input": store.get_meta("input", {}),
        "records": {"total": sum(statuses.values()), **statuses},
        "exports": export_counts,
        **({"quality": quality} if quality is not None else {}),
        **({"reviews": reviews} if reviews is not None else {}),
        "tokens": store.token_totals(),
        "tokens_batch": store.token_totals(batch=True),  # the part of `tokens` sent through a provider batch API
        "call_cache": {"path": settings.execution.cache,
                       "hits": sum(t["calls"] for t in store.token_totals(shared=True).values()),
                       "tokens": store.token_totals(shared=True)},
        "estimated_cost_usd": estimated_cost(store, settings),
        **({"budget": budget} if (budget := budget_info(store, settings)) else {}),
        "errors": store.error_count(open_only=True),
        "errors_resolved": store.error_count(open_only=False) - store.error_count(open_only=True),
        "unparsed_verdicts": store.unparsed_verdicts(),
        "started": _iso(min((i["started"] for i in invocations), default=None)),
        "ended": _iso(max((i["ended"] for i in invocations), default=None)),
        "invocations": len(invocations),
        "wall_seconds": round(wall, 3),
    }


def export_run(store: Store, fmt: str = "jsonl", *, developer_as_system: bool | None = None,
               extras: Sequence[ManifestExtra] = (), reviews: str | None = None,
               review_policy: str | None = None) -> dict[str, Any]:
    """Rebuild the exports and write manifest.json; returns the manifest. Each of `extras` adds its keys
    after the core's, in order (the composition layer passes plugins' hooks, e.g. rbr's refusal metrics)."""
    tally, reviewed = Tally(run_settings(store).export.quality_gate), {}
    counts = export(store, fmt, developer_as_system=developer_as_system, tally=tally, reviews=reviews,
                    review_policy=review_policy, reviewed=reviewed)
    data = manifest(store, counts, tally.summary(), reviewed)
    for extra in extras:
        data.update(extra(store, counts))
    write_json(store.run_dir / "manifest.json", data)
    return data
