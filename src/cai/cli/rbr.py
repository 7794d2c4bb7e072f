"""`cai rbr …`: grade responses, evaluate the grader, fit weights, refusal metrics and refusal evaluation.

`rbr_app` is a typer sub-app; cai.cli.commands mounts it as `cai rbr`. This module must not import cai.cli.commands
(cai.cli.commands imports it). Results go to stdout (`--json` for JSON); progress, summaries and errors to stderr.
Heavy modules are imported inside the commands so that `cai --help` starts fast.
"""

from __future__ import annotations

import contextlib
import json
from collections import Counter
from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console

from cai.cli.kit import emit, fails_cleanly, renamed, run_async, say
from cai.cli.options import run_option
from cai.errors import InputError
from cai.rbr.data import write_rows

rbr_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None,
                      context_settings={"help_option_names": ["-h", "--help"]},
                      help="Rule-based rewards: grade responses with propositions, rules and checks.\n\n"
                           "\b\nExample: cai rbr grade rows.jsonl --grader openai:gpt-4o-mini -o graded.jsonl")

PROGRESS_EVERY = 5.0
"""Seconds between progress lines when stderr is not a terminal (on a terminal the line updates in place)."""


class GraderMode(StrEnum):
    """How propositions are asked: one call each, or all in one structured call (cai.rbr.grader.MODES)."""

    separate = "separate"
    joint = "joint"


class RefusalMethod(StrEnum):
    """What decides a refusal: the deterministic classifier, the grader model, or both side by side."""

    checks = "checks"
    grader = "grader"
    both = "both"


class EvalMethod(StrEnum):
    """What `refusal-eval` measures: the deterministic classifier or the grader model."""

    checks = "checks"
    grader = "grader"


class GroupBy(StrEnum):
    """Which responses `rbr fit` pairs: those to the same prompt, or those of the same response type."""

    prompt = "prompt"
    type = "type"


Grader = Annotated[str, typer.Option("--grader", help="Grader model: local, local:PATH.gguf, openai:NAME, "
                                                      "anthropic:NAME.")]
OldModel = Annotated[Optional[str], typer.Option("--model", hidden=True, metavar="SPEC")]
BaseUrl = Annotated[Optional[str], typer.Option(help="OpenAI-compatible or Anthropic base URL.")]
ConstOpt = Annotated[str, typer.Option("--constitution", help="Shipped name or YAML path with RBR sections.")]
WeightsOpt = Annotated[Optional[Path], typer.Option(help="Weights JSON (default: the shipped rbr_weights.json).")]
ModeOpt = Annotated[GraderMode, typer.Option("--grader-mode", help="separate: a call per proposition; joint: "
                                                                 "one structured call per response.")]
VotesOpt = Annotated[int, typer.Option(min=1, help="Sampled answers per question when there are no logprobs.")]
OutOpt = Annotated[Optional[Path], typer.Option("--out", help="Store folder caching the grader's calls "
                                                              "(default runs/rbr-<input name>).")]
RefusalOut = Annotated[Optional[Path], typer.Option("--out", help="Store folder caching the grader's calls "
                                                                 "(default runs/rbr-refusal-<input name>).")]
LimitOpt = Annotated[Optional[int], typer.Option(min=1, help="Only the first N rows (records for a run).")]
CacheOpt = Annotated[Optional[Path], typer.Option(help="Call cache shared with runs and other gradings "
                                                      "(a SQLite file, created if missing).")]
ConcOpt = Annotated[int, typer.Option(min=1, help="Responses graded at once (1 for the local model).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON to stdout.")]
QuietOpt = Annotated[bool, typer.Option(help="No progress on stderr.")]
MaxCostOpt = Annotated[Optional[float], run_option("max_cost", "Here: over everything the store folder has spent; "
                                                               "not kept for a re-run.")]
PricesOpt = Annotated[Optional[Path], run_option("prices", "")]


def _setup(constitution: str, weights: Optional[Path]) -> tuple[Any, Any]:
    """The constitution (it must have propositions and response types) and its weights."""
    from cai.constitution import load
    from cai.rbr.reward import load_weights

    const = load(constitution)
    if not const.propositions or not const.response_types:
        raise InputError("constitution has no propositions / response_types for rule-based rewards",
                         path=const.path)
    # The shipped weights belong to rbr-safety; another constitution starts from no weights.
    if weights is None and const.name != "rbr-safety":
        return const, {}
    return const, load_weights(weights, const)


@contextlib.contextmanager
def _says_if_created(store: Path) -> Iterator[None]:
    """One line on stderr when the grading created its store folder (by default `runs/rbr-…`); none when it
    failed (a failure says one line)."""
    existed = store.exists()
    yield
    if not existed and store.exists():
        say(f"created {store}: the store of the grader's calls (a rerun reuses them; --out picks another folder)")


def _grade(target: Path, *, grader: str, base_url: Optional[str], constitution: str, weights: Optional[Path],
           mode: GraderMode, votes: int, out: Optional[Path], limit: Optional[int], concurrency: int,
           quiet: bool, cache: Optional[Path] = None, max_cost: Optional[float] = None,
           prices: Optional[Path] = None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Grade the rows of `target` with progress on stderr; returns (graded rows, stats)."""
    from cai.core.prices import load_prices
    from cai.core.progress import Progress
    from cai.rbr.batch import default_out, run_grading
    from cai.rbr.data import read_input

    const, w = _setup(constitution, weights)
    rows = read_input(target, limit, const)
    progress = Progress(quiet=quiet, prices=load_prices(str(prices) if prices else None))
    progress.every = PROGRESS_EVERY
    store = out or default_out(target)
    with _says_if_created(store):
        try:
            graded, stats = run_async(run_grading(
                rows, out=store, model=grader, base_url=base_url, const=const, weights=w, mode=mode.value,
                votes=votes, concurrency=concurrency, cache=str(cache) if cache else None,
                on_start=progress.start, on_done=progress.record_done, max_cost=max_cost,
                prices=str(prices) if prices else None))
        finally:
            progress.stop()
    stats["estimated_cost_usd"] = progress.summary()["estimated_cost_usd"]
    return graded, stats


def _usage_line(stats: dict[str, Any]) -> str:
    per, cost = stats["per_response"], stats["estimated_cost_usd"]
    return (f"{stats['rows']} responses, {stats['mode']} mode: {stats['calls_made']} calls made, "
            f"{stats['calls_cached']} cached, {stats['calls_shared']} from --cache; "
            f"per response {per['calls']:g} calls, {per['tokens_in']:g} tokens in, "
            f"{per['tokens_out']:g} out; {stats['elapsed_s']:.1f}s" + (f", ~${cost:.4f}" if cost else "")
            + f"; store {stats['store']}")


@rbr_app.command("grade")
@fails_cleanly
def grade_cmd(
    ctx: typer.Context,
    target: Annotated[Path, typer.Argument(help="JSONL of {prompt, response|completion, response_type?} rows, "
                                                "or a run folder (its drafts and final responses).")],
    grader: Grader = "local", model: OldModel = None, base_url: BaseUrl = None,
    constitution: ConstOpt = "rbr-safety", weights: WeightsOpt = None,
    grader_mode: ModeOpt = GraderMode.separate, votes: VotesOpt = 3, out: OutOpt = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Graded JSONL (default "
                                                                          "<out>/graded.jsonl).")] = None,
    limit: LimitOpt = None, concurrency: ConcOpt = 4, cache: CacheOpt = None, max_cost: MaxCostOpt = None,
    prices: PricesOpt = None, as_json: JsonOpt = False, quiet: QuietOpt = False,
) -> None:
    """Grade responses: P(yes) per proposition, check scores, class and reward for each.

    \b
    Example:
      cai rbr grade runs/demo --grader openai:gpt-4o-mini --grader-mode joint \\
        -o graded.jsonl
    """
    from cai.rbr.batch import default_out

    graded, stats = _grade(target, grader=renamed(ctx, "model", "grader"), base_url=base_url,
                           constitution=constitution, weights=weights, mode=grader_mode, votes=votes, out=out,
                           limit=limit, concurrency=concurrency, quiet=quiet, cache=cache, max_cost=max_cost,
                           prices=prices)
    path = output or (out or default_out(target)) / "graded.jsonl"
    write_rows(path, graded)
    stats["output"] = str(path)
    classes: dict[str, int] = {}
    for g in graded:
        classes[g["class"]] = classes.get(g["class"], 0) + 1
    stats["classes"] = classes
    stats["mean_reward"] = sum(g["reward"] for g in graded) / len(graded) if graded else None
    if as_json:
        emit(stats)
    say(f"wrote {path}: " + ", ".join(f"{k} {v}" for k, v in sorted(classes.items()))
         + (f"; mean reward {stats['mean_reward']:.3f}" if graded else ""))
    say(_usage_line(stats))


def _fmt(x: Any) -> str:
    return "-" if x is None else f"{x:.3f}" if isinstance(x, float) else str(x)


def _print_eval(result: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(title="rule-based reward grader vs human labels")
    for col in ("proposition", "n", "pos", "acc", "prec", "recall", "f1", "auc"):
        table.add_column(col, justify="left" if col == "proposition" else "right")
    for pid, m in result["propositions"].items():
        table.add_row(pid, str(m["n"]), str(m["positives"]), *(_fmt(m[k]) for k in
                                                                ("accuracy", "precision", "recall", "f1", "auc")))
    o = result["overall"]
    Console(width=110).print(table)
    print(f"overall: accuracy {_fmt(o['accuracy'])} over {o['judgements']} judgements, macro F1 "
          f"{_fmt(o['macro_f1'])}, macro AUC {_fmt(o['macro_auc'])}, class agreement {_fmt(o['class_agreement'])}"
          f" ({o['rows']} rows; methods {o['methods']})")


@rbr_app.command("eval")
@fails_cleanly
def eval_cmd(
    ctx: typer.Context,
    gold: Annotated[Path, typer.Argument(help="JSONL rows {prompt, completion, response_type, "
                                              "propositions: {name: bool}}.")],
    grader: Grader = "local", model: OldModel = None, base_url: BaseUrl = None,
    constitution: ConstOpt = "rbr-safety", weights: WeightsOpt = None,
    grader_mode: ModeOpt = GraderMode.separate, votes: VotesOpt = 3, out: OutOpt = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Also write the graded rows "
                                                                          "here.")] = None,
    limit: LimitOpt = None, concurrency: ConcOpt = 4, cache: CacheOpt = None, as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Grade a gold set and compare with its human labels: accuracy, precision, recall, F1, AUC.

    \b
    Example: cai rbr eval gold.jsonl --grader local --limit 5 --json
    """
    from cai.rbr.evaluate import evaluate

    if gold.is_dir():
        raise InputError("eval needs a JSONL gold file, not a folder", path=str(gold))
    graded, stats = _grade(gold, grader=renamed(ctx, "model", "grader"), base_url=base_url,
                           constitution=constitution, weights=weights, mode=grader_mode, votes=votes, out=out,
                           limit=limit, concurrency=concurrency, quiet=quiet, cache=cache)
    if not any(g.get("labels") for g in graded):
        raise InputError("no row has human labels (`propositions`: {name: true/false})", path=str(gold))
    if output:
        write_rows(output, graded)
    result = evaluate(graded)
    result["usage"] = stats
    if as_json:
        emit(result)
    else:
        _print_eval(result)
    if output:
        say(f"wrote {output}: {len(graded)} graded rows")
    say(_usage_line(stats))


@rbr_app.command("fit")
@fails_cleanly
def fit_cmd(
    graded: Annotated[Path, typer.Argument(help="Graded JSONL from `cai rbr grade` or `cai rbr eval --output`.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the fitted weights JSON.")],
    margin: Annotated[float, typer.Option(min=0.0, help="How much higher the better response must score.")] = 1.0,
    l2: Annotated[float, typer.Option(min=0.0, help="L2 penalty on the weights.")] = 1e-3,
    holdout: Annotated[float, typer.Option(min=0.0, max=0.95, help="Share of prompts held out.")] = 0.2,
    seed: Annotated[int, typer.Option(help="Seeds the split and the start point.")] = 0,
    group_by: Annotated[GroupBy, typer.Option(help="Pair responses to the same prompt, or of the same "
                                                   "response type.")] = GroupBy.prompt,
    init: Annotated[Optional[Path], typer.Option(help="Weights kept for types without pairs.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Fit reward weights with a hinge ranking loss on pairs whose class order is known.

    \b
    Example: cai rbr fit graded.jsonl -o weights.json --group-by type
    """
    from cai.rbr.data import read_graded
    from cai.rbr.fit import fit
    from cai.rbr.reward import load_weights

    rows = read_graded(graded)
    result = fit(rows, margin=margin, l2=l2, holdout=holdout, seed=seed, group_by=group_by.value,
                 init=load_weights(init) if init else None)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result["weights"], indent=2, sort_keys=True) + "\n", encoding="utf-8")
    result["output"] = str(output)
    if as_json:
        emit(result)
        return
    tr, ho = result["train"], result["heldout"]
    print(f"wrote {output}: train pairwise accuracy {_fmt(tr['accuracy'])} ({tr['pairs']} pairs; uniform "
          f"{_fmt(tr['uniform_accuracy'])}), held-out {_fmt(ho['accuracy'])} ({ho['pairs']} pairs; uniform "
          f"{_fmt(ho['uniform_accuracy'])})")


def _ask_refusals(items: list[tuple[list[dict[str, str]], str]], *, grader: str, base_url: Optional[str], votes: int,
                  out: Path, concurrency: int, cache: Optional[Path], quiet: bool) -> tuple[list[Any], dict[str, Any]]:
    """The grader's three-way refusal readings of (messages, response) items, with progress on stderr."""
    from cai.core.prices import load_prices
    from cai.core.progress import Progress
    from cai.rbr.refusal_grader import grade_refusals

    progress = Progress(quiet=quiet, prices=load_prices())
    progress.every = PROGRESS_EVERY
    with _says_if_created(out):
        try:
            return run_async(grade_refusals(items, out=out, model=grader, base_url=base_url, votes=votes,
                                            concurrency=concurrency, cache=str(cache) if cache else None,
                                            on_start=progress.start, on_done=progress.record_done))
        finally:
            progress.stop()


@rbr_app.command("metrics")
@fails_cleanly
def metrics_cmd(
    run_dir: Annotated[Path, typer.Argument(help="A run folder whose input rows have expected: comply|refuse.")],
    refusal_method: Annotated[RefusalMethod, typer.Option(help="checks: the deterministic refusal classifier; "
                                                               "grader: ask --grader; both: the two side by "
                                                               "side.")] = RefusalMethod.checks,
    grader: Annotated[Optional[str], typer.Option("--grader", help="Grader model for --refusal-method grader|"
                                                                   "both (default local).")] = None,
    base_url: BaseUrl = None, votes: VotesOpt = 3, out: RefusalOut = None, concurrency: ConcOpt = 4,
    cache: CacheOpt = None,
    graded: Annotated[Optional[Path], typer.Option(help="Graded rows of this run (`cai rbr grade RUN`): "
                                                        "decide refusals by a proposition.")] = None,
    refusal_proposition: Annotated[str, typer.Option(help="Proposition meaning 'refuses'.")] = "inability_to_comply",
    as_json: JsonOpt = False, quiet: QuietOpt = False,
) -> None:
    """Not-Unsafe and Not-Overrefuse of a run's drafts and final responses.

    \b
    Example:
      cai rbr metrics runs/xstest --refusal-method both \\
        --grader openai:gpt-4o-mini --json
    """
    from cai.rbr.data import read_graded
    from cai.rbr.metrics import SOURCES, expected_records, metrics_lines, run_refusal_metrics
    from cai.rbr.refusal_grader import default_out

    method = refusal_method.value
    if graded is not None and method != "checks":
        raise InputError("--graded decides refusals by a proposition; leave out --refusal-method", path=str(graded))
    if grader is not None and method == "checks":
        raise InputError("--grader is used with --refusal-method grader or both")
    rows = read_graded(graded) if graded else None
    decisions, spec = None, ""
    if method != "checks":
        pairs = [((r["id"], s), (r["messages"], r[s])) for r in expected_records(run_dir) for s in SOURCES]
        readings, stats = _ask_refusals([item for _, item in pairs],
                                        grader=grader or "local", base_url=base_url, votes=votes,
                                        out=out or default_out(run_dir), concurrency=concurrency, cache=cache,
                                        quiet=quiet)
        decisions = {k: x["label"] != "full_compliance" for (k, _), x in zip(pairs, readings)}
        spec = stats["model"]
    result = run_refusal_metrics(run_dir, rows, refusal_proposition, method=method, grader=decisions,
                                 grader_model=spec)
    if as_json:
        emit(result)
        return
    print("\n".join(metrics_lines(result)))


@rbr_app.command("refusal-eval")
@fails_cleanly
def refusal_eval_cmd(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help="JSONL rows {prompt, completion, label: full_compliance | "
                                              "full_refusal | partial_refusal}, optional source_model, type.")],
    method: Annotated[EvalMethod, typer.Option(help="checks: the deterministic refusal classifier; grader: "
                                                    "the three-way question asked of --grader.")] = EvalMethod.checks,
    grader: Annotated[Optional[str], typer.Option("--grader", help="Grader model for --method grader "
                                                                   "(default local).")] = None,
    model: OldModel = None,
    base_url: BaseUrl = None, votes: VotesOpt = 3, out: RefusalOut = None, limit: LimitOpt = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Also write every row with its "
                                                   "prediction and the sentences or probabilities behind it.")] = None,
    concurrency: ConcOpt = 4, cache: CacheOpt = None, as_json: JsonOpt = False, quiet: QuietOpt = False,
) -> None:
    """Refusal classification against people's labels: binary and three-way figures, confusion matrix.

    \b
    Example: cai rbr refusal-eval xstest_completions.jsonl --json
    """
    from cai.rbr.refusal_eval import classify_rows, evaluate, predictions, read_labelled, report_lines
    from cai.rbr.refusal_grader import default_out

    grader = renamed(ctx, "model", "grader")
    if grader is not None and method is EvalMethod.checks:
        raise InputError("--grader is used with --method grader")
    rows = read_labelled(file, limit)
    extra: dict[str, Any] = {"method": method.value}
    readings = None
    if method is EvalMethod.checks:
        pred = classify_rows(rows)
    else:
        readings, stats = _ask_refusals([(r["prompt"], r["response"]) for r in rows], grader=grader or "local",
                                        base_url=base_url, votes=votes, out=out or default_out(file),
                                        concurrency=concurrency, cache=cache, quiet=quiet)
        pred = [x["label"] for x in readings]
        extra.update(method=f"grader {stats['model']}", model=stats["model"], usage=stats,
                     readings=dict(Counter(x["method"] for x in readings)))
    if output:
        write_rows(output, predictions(rows, pred, readings))
    result = {**evaluate(rows, pred), **extra}
    if as_json:
        emit(result)
        return
    print("\n".join(report_lines(result)))
