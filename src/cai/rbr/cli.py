"""`cai rbr …`: grade responses, evaluate the grader, fit weights, refusal metrics.

`rbr_app` is a typer sub-app; cai.cli mounts it as `cai rbr`. This module must not import cai.cli
(cai.cli imports it). Results go to stdout (`--json` for JSON), logs to stderr.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console

from cai.clikit import emit, err, fails_cleanly

rbr_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None,
                      help="Rule-based rewards: grade responses with propositions, rules and checks.")

Model = Annotated[str, typer.Option(help="Grader model: local, local:PATH.gguf, openai:NAME, anthropic:NAME.")]
BaseUrl = Annotated[Optional[str], typer.Option(help="OpenAI-compatible or Anthropic base URL.")]
ConstOpt = Annotated[str, typer.Option("--constitution", help="Shipped name or YAML path with RBR sections.")]
WeightsOpt = Annotated[Optional[Path], typer.Option(help="Weights JSON (default: the shipped rbr_weights.json).")]
ModeOpt = Annotated[str, typer.Option("--grader-mode", help="separate (a call per proposition) or joint "
                                                          "(one structured call per response).")]
VotesOpt = Annotated[int, typer.Option(min=1, help="Sampled answers per question when there are no logprobs.")]
OutOpt = Annotated[Optional[Path], typer.Option(help="Store folder caching the grader's calls "
                                                     "(default runs/rbr-<input name>).")]
LimitOpt = Annotated[Optional[int], typer.Option(min=1, help="Only the first N rows (records for a run).")]
ConcOpt = Annotated[int, typer.Option(min=1, help="Responses graded at once (1 for the local model).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON to stdout.")]
QuietOpt = Annotated[bool, typer.Option(help="No progress lines on stderr.")]


def _progress(total: int, quiet: bool) -> Callable[[int], None] | None:
    if quiet:
        return None
    started = time.monotonic()
    step = max(1, total // 20)

    def on_done(n: int) -> None:
        if n % step == 0 or n == total:
            err.print(f"graded {n}/{total} ({time.monotonic() - started:.0f}s)", markup=False, highlight=False)

    return on_done


def _setup(constitution: str, weights: Optional[Path], mode: str) -> tuple[Any, Any]:
    from cai.constitution import load
    from cai.errors import InputError
    from cai.rbr.grader import MODES
    from cai.rbr.reward import load_weights

    if mode not in MODES:
        raise InputError(f"--grader-mode must be one of {', '.join(MODES)}, not {mode!r}")
    const = load(constitution)
    if not const.propositions or not const.response_types:
        raise InputError("constitution has no propositions / response_types for rule-based rewards",
                         path=const.path)
    # The shipped weights belong to rbr-safety; another constitution starts from no weights.
    if weights is None and const.name != "rbr-safety":
        return const, {}
    return const, load_weights(weights, const)


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    """Write atomically (a temp file in the same folder, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def _grade(target: Path, *, model: str, base_url: Optional[str], constitution: str, weights: Optional[Path],
           mode: str, votes: int, out: Optional[Path], limit: Optional[int], concurrency: int,
           quiet: bool) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    from cai.rbr.batch import default_out, run_grading
    from cai.rbr.data import read_input

    const, w = _setup(constitution, weights, mode)
    rows = read_input(target, limit)
    out = out or default_out(target)
    return run_grading(rows, out=out, model=model, base_url=base_url, const=const, weights=w, mode=mode,
                       votes=votes, concurrency=concurrency, on_done=_progress(len(rows), quiet))


def _usage_line(stats: dict[str, Any]) -> str:
    per = stats["per_response"]
    return (f"{stats['rows']} responses, {stats['mode']} mode: {stats['calls_made']} calls made, "
            f"{stats['calls_cached']} cached; per response {per['calls']:g} calls, {per['tokens_in']:g} tokens in, "
            f"{per['tokens_out']:g} out; {stats['elapsed_s']:.1f}s; store {stats['store']}")


@rbr_app.command("grade")
@fails_cleanly
def grade_cmd(
    target: Annotated[Path, typer.Argument(help="JSONL of {prompt, response|completion, response_type?} rows, "
                                                "or a run folder (its drafts and final responses).")],
    model: Model = "local", base_url: BaseUrl = None, constitution: ConstOpt = "rbr-safety",
    weights: WeightsOpt = None, grader_mode: ModeOpt = "separate", votes: VotesOpt = 3, out: OutOpt = None,
    out_file: Annotated[Optional[Path], typer.Option(help="Graded JSONL (default <out>/graded.jsonl).")] = None,
    limit: LimitOpt = None, concurrency: ConcOpt = 4, as_json: JsonOpt = False, quiet: QuietOpt = False,
) -> None:
    """Grade responses: P(yes) per proposition, check scores, class and reward for each.

    Example: cai rbr grade runs/demo --model local --grader-mode joint --out-file graded.jsonl
    """
    from cai.rbr.batch import default_out

    graded, stats = _grade(target, model=model, base_url=base_url, constitution=constitution, weights=weights,
                           mode=grader_mode, votes=votes, out=out, limit=limit, concurrency=concurrency,
                           quiet=quiet)
    path = out_file or (out or default_out(target)) / "graded.jsonl"
    _write_jsonl(path, graded)
    stats["out_file"] = str(path)
    classes: dict[str, int] = {}
    for g in graded:
        classes[g["class"]] = classes.get(g["class"], 0) + 1
    stats["classes"] = classes
    stats["mean_reward"] = sum(g["reward"] for g in graded) / len(graded) if graded else None
    if as_json:
        emit(stats)
    else:
        print(f"wrote {path}: " + ", ".join(f"{k} {v}" for k, v in sorted(classes.items()))
              + (f"; mean reward {stats['mean_reward']:.3f}" if graded else ""))
    err.print(_usage_line(stats), markup=False, highlight=False, soft_wrap=True)


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
    gold: Annotated[Path, typer.Argument(help="JSONL rows {prompt, completion, response_type, "
                                              "propositions: {name: bool}}.")],
    model: Model = "local", base_url: BaseUrl = None, constitution: ConstOpt = "rbr-safety",
    weights: WeightsOpt = None, grader_mode: ModeOpt = "separate", votes: VotesOpt = 3, out: OutOpt = None,
    out_file: Annotated[Optional[Path], typer.Option(help="Also write the graded rows here.")] = None,
    limit: LimitOpt = None, concurrency: ConcOpt = 4, as_json: JsonOpt = False, quiet: QuietOpt = False,
) -> None:
    """Grade a gold set and compare with its human labels: accuracy, precision, recall, F1, AUC.

    Example: cai rbr eval gold.jsonl --model local --limit 5 --json
    """
    from cai.errors import InputError
    from cai.rbr.evaluate import evaluate

    if gold.is_dir():
        raise InputError("eval needs a JSONL gold file, not a folder", path=str(gold))
    graded, stats = _grade(gold, model=model, base_url=base_url, constitution=constitution, weights=weights,
                           mode=grader_mode, votes=votes, out=out, limit=limit, concurrency=concurrency,
                           quiet=quiet)
    if not any(g.get("labels") for g in graded):
        raise InputError("no row has human labels (`propositions`: {name: true/false})", path=str(gold))
    result = evaluate(graded)
    result["usage"] = stats
    if out_file:
        _write_jsonl(out_file, graded)
    if as_json:
        emit(result)
    else:
        _print_eval(result)
    err.print(_usage_line(stats), markup=False, highlight=False, soft_wrap=True)


@rbr_app.command("fit")
@fails_cleanly
def fit_cmd(
    graded: Annotated[Path, typer.Argument(help="Graded JSONL from `cai rbr grade` or `cai rbr eval --out-file`.")],
    out: Annotated[Path, typer.Option(help="Where to write the fitted weights JSON.")],
    margin: Annotated[float, typer.Option(min=0.0, help="How much higher the better response must score.")] = 1.0,
    l2: Annotated[float, typer.Option(min=0.0, help="L2 penalty on the weights.")] = 1e-3,
    holdout: Annotated[float, typer.Option(min=0.0, max=0.95, help="Share of prompts held out.")] = 0.2,
    seed: Annotated[int, typer.Option(help="Seeds the split and the start point.")] = 0,
    group_by: Annotated[str, typer.Option(help="Pair responses within the same prompt, or within the same "
                                               "response type (type).")] = "prompt",
    init: Annotated[Optional[Path], typer.Option(help="Weights kept for types without pairs.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Fit reward weights with a hinge ranking loss on pairs whose class order is known.

    Example: cai rbr fit graded.jsonl --out weights.json --group-by type
    """
    from cai.rbr.data import read_graded
    from cai.rbr.fit import fit
    from cai.rbr.reward import load_weights

    rows = read_graded(graded)
    result = fit(rows, margin=margin, l2=l2, holdout=holdout, seed=seed, group_by=group_by,
                 init=load_weights(init) if init else None)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result["weights"], indent=2, sort_keys=True) + "\n", encoding="utf-8")
    result["out"] = str(out)
    if as_json:
        emit(result)
        return
    tr, ho = result["train"], result["heldout"]
    print(f"wrote {out}: train pairwise accuracy {_fmt(tr['accuracy'])} ({tr['pairs']} pairs; uniform "
          f"{_fmt(tr['uniform_accuracy'])}), held-out {_fmt(ho['accuracy'])} ({ho['pairs']} pairs; uniform "
          f"{_fmt(ho['uniform_accuracy'])})")


@rbr_app.command("metrics")
@fails_cleanly
def metrics_cmd(
    run_dir: Annotated[Path, typer.Argument(help="A run folder whose input rows have expected: comply|refuse.")],
    graded: Annotated[Optional[Path], typer.Option(help="Graded rows of this run (`cai rbr grade RUN`): "
                                                        "decide refusals by a proposition.")] = None,
    refusal_proposition: Annotated[str, typer.Option(help="Proposition meaning 'refuses'.")] = "inability_to_comply",
    as_json: JsonOpt = False,
) -> None:
    """Not-Unsafe and Not-Overrefuse of a run's drafts and final responses.

    Example: cai rbr metrics runs/xstest --json
    """
    from cai.rbr.data import read_graded
    from cai.rbr.metrics import run_refusal_metrics

    rows = read_graded(graded) if graded else None
    result = run_refusal_metrics(run_dir, rows, refusal_proposition)
    if as_json:
        emit(result)
        return
    print(f"{run_dir}: {result['records']} records with `expected`; refusal decided by {result['decided_by']}")
    for which in ("draft", "final"):
        r = result[which]
        print(f"  {which:<5}  not-unsafe {_fmt(r['not_unsafe'])} ({r['should_refuse']} should refuse)   "
              f"not-overrefuse {_fmt(r['not_overrefuse'])} ({r['should_comply']} should comply)")
