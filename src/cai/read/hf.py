"""A run as a Hugging Face dataset: `write_hf` writes a folder that `datasets.load_dataset(DIR, "pairs")`
and the Hub read (`sft/` and `pairs/` Parquet files and a `README.md` dataset card); `dataset_dict` gives
the same rows as an in-memory `datasets.DatasetDict`.

Both read the run through a read-only store (no lock, nothing written to the run folder, safe while
`cai run` writes it). Rows are the exports' rows (`cai.read.rows.run_rows`, done records in input order,
`developer_as_system` as for `cai.read.export`) with the exports' Parquet schemas (`cai.read.parquet`). The card's
numbers are the manifest's (`cai.read.export.manifest`), computed from the store as the files are written.

Files are written as the exports are: temp files next to them, renamed once all are complete; on a failure
the temp files are deleted, and an OSError becomes one OutputError naming the path (exit 2). A data file's name
ends with a fingerprint of its rows (`data_file`): `datasets` caches a folder's configs under a key that does not
change when the files do, so a folder written again under the same name would load the older rows.
"""

from __future__ import annotations

import hashlib
import html
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from cai.errors import InputError, one_line
from cai.read import parquet
from cai.read.cmdline import budget_text
from cai.read.decisions import ReviewTally
from cai.read.export import Sink, all_or_none, drop_counts, manifest, run_settings, sweep, writing
from cai.read.quality import Tally, counts_text
from cai.read.rows import RowOptions, labeled_run, run_rows
from cai.settings import ROLES
from cai.store import Store

if TYPE_CHECKING:
    import datasets

CONFIGS = ("sft", "pairs")
DATA_FILE = "train-00000-of-00001.parquet"  # the Hub's shard naming: one train split, one shard
README = "README.md"
TAGS = ["cai", "constitutional-ai", "synthetic", "sft", "dpo", "preference"]
_SIZES = [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
          (10_000_000, "1M<n<10M")]


def _rows(store: Store, developer_as_system: bool | None, add: Callable[[str, dict[str, Any]], None],
          reviews: str | None = None, review_policy: str | None = None
          ) -> tuple[dict[str, int], Tally, dict[str, Any]]:
    """Pass every sft and pair row of the run's done records to `add(config, row)` (one pass over the store);
    returns the counts, keyed as the manifest's `exports`, the quality gate's counts and the manifest's
    `reviews` section (what people's decisions did, `cai.read.decisions`)."""
    counts = dict.fromkeys(CONFIGS, 0)
    opts = RowOptions.of_run(store, run_settings(store), developer_as_system, reviews, review_policy)
    tally, reviewed = Tally(opts.quality_gate), ReviewTally(opts.reviews.mode, opts.reviews.policy)
    for rows in run_rows(store, opts):
        rows.tally(tally, reviewed)
        for name, row in [("sft", rows.sft)] + [("pairs", p) for p in rows.pairs]:
            if row:
                add(name, row)
                counts[name] += 1
    return {**counts, **drop_counts(tally)}, tally, reviewed.summary(opts.reviews)


def _size_category(n: int) -> str:
    return next((name for bound, name in _SIZES if n < bound), "other")


def _by_role(d: dict[str, Any]) -> list[tuple[str, Any]]:
    """`d`'s items, the loop's roles first (generator, critic, reviser), then the others (grader) by name."""
    return sorted(d.items(), key=lambda kv: (ROLES.index(kv[0]) if kv[0] in ROLES else len(ROLES), kv[0]))


_MARKUP = re.compile(r"([\\`*_\[\]|])")  # what starts emphasis, code, a link or an image, or ends a table cell


def _text(value: Any) -> str:
    """`value` as literal Markdown text on one line: HTML tags and entities shown as typed (`html.escape`),
    Markdown's emphasis, code, link and table characters backslash-escaped. Every user-controlled string
    (the run folder's name, model names, constitution and layer names) goes through this."""
    return _MARKUP.sub(r"\\\1", html.escape(one_line(str(value)), quote=False))


def _review_row(reviews: dict[str, Any] | None) -> str:
    if not reviews or not reviews.get("applied"):
        return "none"
    return (f"{reviews['applied']} pairs decided ({reviews['mode']}, {reviews['policy']}): {reviews['flipped']} "
            f"flipped, {reviews['edited']} edited, {reviews['dropped']} dropped; {reviews['stale']} stale decisions")


def _review_text(reviews: dict[str, Any] | None) -> str:
    """The card's paragraph on what people decided (the manifest's `reviews` section)."""
    if not reviews or reviews.get("mode") == "ignore":
        return ("People's review decisions were not applied: every pair is as the models made it (`source` "
                "`revision` or `ai_label`, `review` null).")
    if not reviews.get("applied"):
        return ("No person has reviewed these pairs: every pair is as the models made it (`source` `revision` or "
                "`ai_label`, `review` null).")
    only = (" Only the pairs people decided were written." if reviews["mode"] == "only" else "")
    return (f"People reviewed {reviews['applied']} of these pairs (where reviewers differed, the "
            f"`{_text(reviews['policy'])}` policy decided): {reviews['flipped']} were flipped (the other side was "
            f"better), {reviews['edited']} had their better side corrected by hand, and {reviews['dropped']} were "
            "dropped (a tie, both bad, or reviewers who disagreed). A pair people decided has `source` `human` (or "
            "`human_edit` when corrected) and `review` (`decision`, `reviewers`); it is written as they decided "
            f"even where the quality gate flagged it.{only} Decisions about text that has since changed were not "
            f"applied ({reviews['stale']}).")


def data_file(fingerprint: str) -> str:
    """A config's data file: the Hub's shard name, then the first 16 hex digits of `fingerprint` (the sha256 of
    its column names and its rows as JSON), so that the name, and `datasets`' cache key with it, changes whenever
    the rows do."""
    return f"{DATA_FILE.removesuffix('.parquet')}-{fingerprint[:16]}.parquet"


def card(name: str, info: dict[str, Any], rewards: bool, files: dict[str, str]) -> str:
    """The dataset card (README.md) for manifest `info` whose `exports` counts the rows written to `files`
    (config → data file name)."""
    ex, settings = info["exports"], info["settings"]
    quality = info.get("quality") or {}
    dropped = {k.removeprefix("pairs_dropped_"): v for k, v in ex.items() if k.startswith("pairs_dropped_")}
    sft_dropped = {k.removeprefix("sft_dropped_"): v for k, v in ex.items() if k.startswith("sft_dropped_")}
    front = {"pretty_name": name,
             "configs": [{"config_name": c, "data_files": [{"split": "train", "path": f"{c}/{files[c]}"}]}
                         for c in CONFIGS if ex[c]],
             "task_categories": ["text-generation"], "tags": TAGS, "annotations_creators": ["machine-generated"],
             "size_categories": [_size_category(max(ex["sft"], ex["pairs"]))]}
    const, loop = info["constitution"], settings["loop"]
    records = ", ".join(f"{k} {v}" for k, v in info["records"].items() if k != "total")
    tokens = "; ".join(f"{role} {t['tokens_in']} in / {t['tokens_out']} out ({t['calls']} calls)"
                       for role, t in _by_role(info["tokens"])) or "none"
    cost = info["estimated_cost_usd"]
    rows = [*((f"{role} model", spec) for role, spec in _by_role(info["models"])),
            ("constitution", f"{const.get('name')} (sha256 {const.get('sha256')})"
                             + ("; layers " + " → ".join(x["name"] for x in const["layers"])
                                if len(const.get("layers") or []) > 1 else "")),
            ("rounds", loop["rounds"]), ("stop when clean", "yes" if loop["stop_when_clean"] else "no"),
            ("seed", info["seed"]), ("records", f"{info['records']['total']} ({records})"),
            ("sft rows", ex["sft"]), ("pairs", ex["pairs"]),
            ("pairs kept out", f"{ex['pairs_dropped']} ({counts_text(dropped) or 'none'})"),
            ("sft rows kept out", f"{ex.get('sft_dropped', 0)} ({counts_text(sft_dropped) or 'none'})"),
            ("quality gate", quality.get("gate", "not recorded")),
            ("people's review", _review_row(info.get("reviews"))),
            ("tokens", tokens), ("estimated cost (USD)", "unknown" if cost is None else cost),
            *([("budget", budget_text(info["budget"]))] if info.get("budget") else []),
            ("cai version", info["cai_version"]), ("last run ended (UTC)", info["ended"])]
    table = "\n".join(f"| {k} | {_text(v)} |" for k, v in rows)
    reward_cols = ", `reward_chosen`, `reward_rejected`" if rewards else ""
    no_pairs = "" if ex["pairs"] else ", so not listed in `configs`: every pair was dropped"
    stop_text = " (a verdict that found no violation ended the loop)" if loop["stop_when_clean"] else ""
    reward_text = ""
    if rewards:
        margin, scoring = settings["export"]["min_reward_margin"], settings["scoring"] or {}
        reward_text = ("\n\nThe run used rule-based rewards: a grader model scored the draft and each revision "
                       "against the propositions of a constitution"
                       + (", and the reviser was told what failed" if scoring.get("feedback") else "")
                       + ". `reward_chosen` is the final revision's reward, `reward_rejected` the draft's"
                       + (f"; pairs whose reward improved by less than {margin} were dropped." if margin is not None
                          else "."))
    return f"""---
license: unknown  # fill in before publishing: the prompts' license and the model providers' terms decide it
{yaml.safe_dump(front, sort_keys=False, allow_unicode=True)}---

# {_text(name)}

Constitutional-AI feedback data written by cai {info["cai_version"]}: two configurations, one `train` split
each, in TRL's conversational format (lists of `{{"role", "content"}}` messages):

- `sft` ({ex["sft"]} rows): `id`, `messages` (the prompt's turns, then the final revision as the assistant turn),
  `quality` (see below).
- `pairs` ({ex["pairs"]} rows{no_pairs}): `id`, `prompt` (the prompt's turns, the last one the user's), `chosen`
  and `rejected` (one assistant turn each), `metadata` (`principles`, `rounds`, `violations`), `quality`,
  `source` and `review` (see below){reward_cols}.

```python
from datasets import load_dataset

pairs = load_dataset("path/to/this/folder", "pairs", split="train")  # or the Hub repository's name
```

## How the pairs were made

The generator model drafted a response to each prompt. Then, in each round, one principle of the
constitution was sampled (seeded by the run's seed and the prompt, without repeats while the constitution
has enough), the critic judged the current response against it (whether it violates the principle, how
severely, and why), and the reviser rewrote the response to answer the critique{stop_text}. The final
revision is `chosen` and the draft is `rejected`; `metadata` lists each round's principle and verdict. A
pair is kept only when the final revision is non-empty and differs from the draft.{reward_text}

## Quality

Every row carries `quality`, the flags cai's quality gate found (deterministic checks, no model call):
`truncated` (a response cut off at the token limit), `degenerate` (repetition loops), `leak` (the revision
talks about the conversation or repeats the critique instead of answering), `new_refusal` (the revision refuses
a prompt the draft answered and that should be answered), and, with rewards or AI labels, `worse_by_reward`
and `worse_by_judge`. This dataset was written with the gate at `{_text(quality.get("gate", "default"))}`,
which kept out rows flagged {_text(", ".join(quality.get("keeps_out") or []) or "with nothing")}; the table
below counts what it kept out.

## People's review

{_review_text(info.get("reviews"))}

## Provenance

| | |
|---|---|
{table}

## License

Not set (`license: unknown`). The dataset holds your prompts and text written by the models above: set
`license` in the front matter to what their licenses and the providers' terms allow.
"""


def _nothing_to_write(counts: dict[str, int]) -> str:
    """Why a run gave no sft row (`datasets` cannot load an empty split): no done record, or the quality gate."""
    if not counts.get("sft_dropped"):
        return "no finished record yet: nothing to write"
    flags = counts_text({k.removeprefix("sft_dropped_"): n for k, n in counts.items() if k.startswith("sft_dropped_")})
    return (f"no sft row to write: the quality gate kept out all {counts['sft_dropped']} ({flags}); `cai run` "
            "again with --quality-gate off exports them with their flags (no model call), or review them "
            "(docs/review.md)")


def write_hf(run_dir: Path, out_dir: Path, *, developer_as_system: bool | None = None, reviews: str | None = None,
             review_policy: str | None = None) -> dict[str, Any]:
    """Write the run's sft and pairs as a Hugging Face dataset folder in `out_dir` (created if missing):
    `sft/` and `pairs/` Parquet files and a README.md dataset card. A config without rows gets no file and no
    `configs` entry (`datasets` cannot load an empty split); InputError if the run has no done record yet.
    `reviews` and `review_policy`: what people's decisions do (None: the run's settings; docs/review.md).
    Returns {"out", "files", "rows", "pairs_dropped"}. OutputError naming the path if it cannot be written."""
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    store = Store.open_run(run_dir, readonly=True)
    try:
        settings = run_settings(store)
        rewards, labeled = settings.scoring is not None, labeled_run(store, settings)
        with writing(out_dir):
            out_dir.mkdir(parents=True, exist_ok=True)
        for name in CONFIGS:
            with writing(out_dir / name):
                (out_dir / name).mkdir(exist_ok=True)
            sweep(out_dir / name, [DATA_FILE])
        sweep(out_dir, [README])
        readme = out_dir / README
        schemas = {name: parquet.schema(name, rewards=rewards, labels=labeled) for name in CONFIGS}
        prints = {name: hashlib.sha256(json.dumps(schema.names).encode()) for name, schema in schemas.items()}

        def add(name: str, row: dict[str, Any]) -> None:
            prints[name].update(json.dumps(row, sort_keys=True, ensure_ascii=False, default=str).encode() + b"\n")
            sinks[name].add(row)

        with all_or_none({}) as sinks:
            for name, schema in schemas.items():  # temp files named after DATA_FILE, renamed to data_file(...)
                sinks[name] = Sink(out_dir / name / DATA_FILE, schema, keep_empty=False)
            counts, tally, reviewed = _rows(store, developer_as_system, add, reviews, review_policy)
            if not counts["sft"]:
                raise InputError(_nothing_to_write(counts), path=str(run_dir))
            names = {name: data_file(prints[name].hexdigest()) for name in CONFIGS}
            for name in CONFIGS:
                sinks[name].path = out_dir / name / names[name]
            sinks[README] = Sink(readme)  # last: the card goes in place once the data files are
            info = manifest(store, counts, tally.summary(), reviewed)
            sinks[README].write(card(run_dir.resolve().name, info, rewards, names))
    finally:
        store.close()
    paths = {name: out_dir / name / names[name] for name in CONFIGS}
    for name, path in paths.items():  # older exports' data files: the card no longer names them
        for old in (out_dir / name).glob("train-*.parquet"):
            if old != path:
                with writing(old):
                    old.unlink(missing_ok=True)
    files = {n: str(p) for n, p in paths.items() if counts[n]}
    return {"out": str(out_dir), "files": {**files, "card": str(readme)}, "rows": {n: counts[n] for n in CONFIGS},
            "pairs_dropped": counts["pairs_dropped"]}


def dataset_dict(run_dir: Path, *, developer_as_system: bool | None = None, reviews: str | None = None
                 ) -> datasets.DatasetDict:
    """The run's rows as a `datasets.DatasetDict` with `sft` (id, messages) and `pairs` (id, prompt, chosen,
    rejected, metadata, quality, source, review, and rewards with --rbr), the columns and types of the Parquet
    exports; `reviews` as for `write_hf`. Needs the
    optional `datasets` package (the `hf` extra): InputError without it."""
    try:
        import datasets  # an optional extra, imported only here
    except ImportError:
        raise InputError("to_datasets() needs the 'hf' extra (the datasets package): pip install 'cai[hf]'") from None
    store = Store.open_run(Path(run_dir), readonly=True)
    try:
        settings = run_settings(store)
        rewards, labeled = settings.scoring is not None, labeled_run(store, settings)
        rows: dict[str, list[dict[str, Any]]] = {name: [] for name in CONFIGS}
        _rows(store, developer_as_system, lambda name, row: rows[name].append(row), reviews)  # counts not needed
    finally:
        store.close()
    schemas = {name: parquet.schema(name, rewards=rewards, labels=labeled) for name in CONFIGS}
    return datasets.DatasetDict({  # column lists: Dataset.from_list cannot take an empty split
        name: datasets.Dataset.from_dict({col: [row.get(col) for row in rows[name]] for col in schema.names},
                                         features=datasets.Features.from_arrow_schema(schema))
        for name, schema in schemas.items()})
