"""`cai label` and `cai judge-eval`: thin commands over `cai.labels.tasks` (cai.cli.commands registers them).
The library is imported inside the commands, so that `cai --help` starts fast."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Optional

import typer

from cai.cli.kit import emit, fails_cleanly, renamed, run_async, say
from cai.cli.options import run_option

Judge = Annotated[Optional[str], typer.Option("--judge", help="Judge model: local, openai:NAME, anthropic:NAME "
                                                              "(default for a run: its critic; else local).")]
OldModel = Annotated[Optional[str], typer.Option("--model", hidden=True, metavar="SPEC")]
BaseUrl = Annotated[Optional[str], typer.Option(help="OpenAI-compatible or Anthropic base URL.")]
Cot = Annotated[bool, typer.Option(help="The judge reasons before answering (labels clamped to [0.4, 0.6]).")]
Votes = Annotated[int, typer.Option(min=1, help="Sampled answers per order when the judge has no logprobs.")]
Const = Annotated[str, typer.Option(help="Constitution whose `comparisons:` the judge uses (files only; a run "
                                         "uses its own).")]
Concurrency = Annotated[int, typer.Option(min=1, help="Items judged at once (1 for the local model).")]
AsJson = Annotated[bool, typer.Option("--json", help="Print the result as JSON to stdout.")]
MaxCost = Annotated[Optional[float], run_option("max_cost", "Here: over everything the folder has spent (a run's own "
                                                            "calls included); not kept for a re-run.")]


@fails_cleanly
def label(
    ctx: typer.Context,
    target: Annotated[Path, typer.Argument(help="A run folder, or a .jsonl file of `prompt` + `responses`.")],
    judge: Judge = None,
    model: OldModel = None,
    out: Annotated[Optional[Path], typer.Option(help="For a file: where labels.jsonl, pairs.jsonl and the call "
                                                     "store go (default runs/label-<file name>).")] = None,
    cot: Cot = False,
    votes: Votes = 3,
    min_margin: Annotated[float, typer.Option(min=0.0, max=0.5, help="Keep a pair only if P(chosen ≻ rejected) "
                                                                     "- 0.5 exceeds this.")] = 0.0,
    rank_by: Annotated[Literal["judge", "rbr", "judge+rbr"], typer.Option(
        help="Rank by the judge, the run's RBR rewards, or both.")] = "judge",
    constitution: Const = "default",
    base_url: BaseUrl = None,
    concurrency: Concurrency = 4,
    max_cost: MaxCost = None,
    as_json: AsJson = False,
) -> None:
    """Judge every pair of candidates in both orders and write preference pairs: for a run folder, its draft,
    samples and revisions (the run's exports are rebuilt); for a file, its rows' `responses`.

    Example: cai label runs/demo        or: cai label rows.jsonl --judge openai:gpt-4o-mini
    """
    from cai.labels.tasks import label_file, label_run
    from cai.settings import LabelSettings

    judge = renamed(ctx, "model", "judge")
    labels = LabelSettings(judge=judge, cot=cot, votes=votes, min_margin=min_margin, rank_by=rank_by)
    if target.is_dir():
        from cai.api import manifest_extras

        manifest = run_async(label_run(target, labels, base_url=base_url, concurrency=concurrency,
                                       extras=manifest_extras(), max_cost=max_cost))
        if as_json:
            emit(manifest)
        ex = manifest["exports"]
        say(f"wrote {target}/: {ex.get('labels', 0)} comparisons, {ex.get('pairs_ai_label', 0)} labeled pairs "
            f"({ex.get('label_near_ties', 0)} near-ties dropped), {ex['pairs']} pairs in all")
        return
    folder = out or Path("runs") / f"label-{target.stem}"
    info = run_async(label_file(target, folder, labels, judge or "local", constitution=constitution,
                                base_url=base_url, concurrency=concurrency, max_cost=max_cost))
    if as_json:
        emit(info)
    say(f"wrote {folder}/: {info['comparisons']} comparisons of {info['rows']} rows, {info['pairs']} pairs "
        f"({info['near_ties']} near-ties dropped); {info['calls_made']} calls, {info['calls_cached']} cached")


@fails_cleanly
def judge_eval(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help="A .jsonl of `prompt`, `chosen`, `rejected` (optional `section`, "
                                              "`tags`).")],
    judge: Judge = None,
    model: OldModel = None,
    out: Annotated[Optional[Path], typer.Option(help="Store folder keeping the judge's calls (default "
                                                     "runs/judge-eval-<file name>).")] = None,
    cot: Cot = False,
    votes: Votes = 3,
    constitution: Const = "default",
    base_url: BaseUrl = None,
    concurrency: Concurrency = 4,
    limit: Annotated[Optional[int], typer.Option(min=1, help="Only the first N rows.")] = None,
    as_json: AsJson = False,
) -> None:
    """How often the judge prefers the known-better response (both orders, as labeling asks), per section and
    tag, its position bias and the undecided pairs.

    Example: cai judge-eval ../shared/data/modelspec_pairs_dev.jsonl --judge local
    """
    from cai.labels.tasks import judge_eval as evaluate
    from cai.settings import LabelSettings

    judge = renamed(ctx, "model", "judge")
    folder = out or Path("runs") / f"judge-eval-{file.stem}"
    info = run_async(evaluate(file, folder, judge or "local", LabelSettings(cot=cot, votes=votes),
                              constitution=constitution, base_url=base_url, concurrency=concurrency, limit=limit))
    if as_json:
        emit(info)
        return
    pb = info["position_bias"]
    print(f"judge {info['judge']} on {info['file']}: {info['pairs']} pairs, agreement {info['agreement']} "
          f"({info['decided']} decided, {info['undecided']} undecided)")
    print(f"position bias: first-shown option won {pb['first_shown_wins']} of single-order asks; the two orders "
          f"disagreed on {pb['orders_disagree']} of pairs; mean confidence |p-0.5| {info['mean_confidence']}")
    for tag, t in info["by_tag"].items():
        print(f"  {tag:<32} {t['pairs']:>4} pairs  agreement {t['agreement']}")
    say(f"{info['calls_made']} calls, {info['calls_cached']} cached")
