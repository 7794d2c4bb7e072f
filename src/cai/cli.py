"""The `cai` command. Logs and progress go to stderr; `--json` prints results to stdout.

Exit codes: 0 ok, 1 the run had failed records, 2 bad usage, input, files or disk, 3 the run folder is
in use by another cai process, 4 the model endpoint is unusable (unreachable, model not found),
130 interrupted. `cai batch` adds 75: still waiting on the provider (see cai.batch_cli).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Literal, Optional

import typer

from cai import __version__
from cai.batch_cli import add_submit, batch_app
from cai.clikit import OneLineErrors, emit, err, fails_cleanly, run_async
from cai.cmdline import quote, resume_command, retry_command, summary_line
from cai.constitution_cli import constitution_app
from cai.errors import Interrupted
from cai.labels_cli import judge_eval, label
from cai.rbr.cli import rbr_app
from cai.votes_cli import import_votes

HELP = {"help_option_names": ["-h", "--help"]}
app = typer.Typer(cls=OneLineErrors, add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  context_settings=HELP,
                  help="Make AI-feedback training data: draft, critique against a constitution, revise, export.\n\n"
                       "Example: cai run examples/prompts.jsonl --out runs/demo --limit 6 --max-tokens 64\n\n"
                       "Exit codes: 0 ok, 1 some records failed, 2 bad usage, input, files or disk, 3 the run "
                       "folder is in use by another cai process, 4 the model endpoint is unusable, 130 interrupted.")
app.add_typer(constitution_app, name="constitution")
constitution_app.command("import-votes")(import_votes)
app.add_typer(rbr_app, name="rbr")
app.add_typer(batch_app, name="batch")


def _version(value: bool) -> None:
    if value:
        print(f"cai {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                help="Print the version and exit.")] = False) -> None:
    """cai: constitutional AI feedback data."""


Format = Annotated[Literal["jsonl", "parquet"], typer.Option(help="Export format.")]
DevAsSystem = Annotated[bool, typer.Option(
    "--system-role-for-developer/--keep-developer-role",
    help="Write `developer` turns of prompts as `system` in sft and pairs (most chat templates reject a "
         "developer role).")]


@app.command()
@fails_cleanly
def run(
    input: Annotated[Path, typer.Argument(help="Prompts: .jsonl (prompt or messages), .txt or .csv.")],
    out: Annotated[Optional[Path], typer.Option(help="Run folder (default runs/<input name>).")] = None,
    model: Annotated[str, typer.Option(help="Model for every role: local, local:PATH.gguf, "
                                            "openai:NAME, anthropic:NAME.")] = "local",
    generator: Annotated[Optional[str], typer.Option(help="Model that drafts (overrides --model).")] = None,
    critic: Annotated[Optional[str], typer.Option(help="Model that critiques (overrides --model).")] = None,
    reviser: Annotated[Optional[str], typer.Option(help="Model that revises (overrides --model).")] = None,
    base_url: Annotated[Optional[str], typer.Option(help="OpenAI-compatible or Anthropic base URL.")] = None,
    constitution: Annotated[Optional[list[str]], typer.Option(
        help="Shipped name or path to a YAML file (default: default); repeat it to stack layers, platform first "
             "(see docs/constitution.md).")] = None,
    rounds: Annotated[int, typer.Option(min=0, help="Critique → revise rounds.")] = 2,
    stop_when_clean: Annotated[bool, typer.Option(help="Stop when the critic finds no violation.")] = False,
    fewshot: Annotated[Optional[int], typer.Option(min=0, help="Worked examples in the critic's and reviser's "
                                                               "prompts (default: all in prompts/fewshot.yaml).")
                       ] = None,
    max_tokens: Annotated[int, typer.Option(min=1, help="Max tokens per reply.")] = 256,
    temperature: Annotated[float, typer.Option(min=0.0, max=2.0)] = 0.7,
    seed: Annotated[int, typer.Option(help="Seeds principle sampling and model sampling.")] = 0,
    concurrency: Annotated[int, typer.Option(min=1, help="Records in flight.")] = 8,
    limit: Annotated[Optional[int], typer.Option(min=1, help="Only the first N prompts.")] = None,
    max_retries: Annotated[int, typer.Option(min=0, help="Retries per call on 429/5xx/timeouts.")] = 5,
    timeout: Annotated[float, typer.Option(min=0.01, help="Seconds per call attempt.")] = 120.0,
    rpm: Annotated[Optional[int], typer.Option(min=1, help="Max requests per minute per endpoint.")] = None,
    tpm: Annotated[Optional[int], typer.Option(min=1, help="Max (estimated) tokens per minute per endpoint.")] = None,
    format: Format = "jsonl",
    system_role_for_developer: DevAsSystem = False,
    restart: Annotated[bool, typer.Option(help="Move an existing run aside and start afresh.")] = False,
    retry_failed: Annotated[bool, typer.Option(help="Retry only the records that failed.")] = False,
    prices: Annotated[Optional[Path], typer.Option(help="Price table JSON for the cost estimate.")] = None,
    cache: Annotated[Optional[Path], typer.Option(help="Call cache shared by runs (a SQLite file, created if "
                                                       "missing): identical calls are answered from it.")] = None,
    engine: Annotated[Literal["local", "ray"], typer.Option(
        help="local: this process; ray: shard the records to Ray worker actors (pip install 'cai[ray]'; see "
             "docs/ray.md).")] = "local",
    ray_address: Annotated[Optional[str], typer.Option(help="With --engine ray: 'auto' or HOST:PORT of a running "
                                                            "cluster (default: start a local one).")] = None,
    workers: Annotated[Optional[int], typer.Option(min=1, help="With --engine ray: worker actors (default: the "
                                                               "cluster's CPUs, at most 8).")] = None,
    local_slots: Annotated[Optional[int], typer.Option(
        min=1, max=64, help="Sequences the embedded model decodes together, each role's prompt prefix kept "
                            "warm (default 1: one at a time, as before; or CAI_LOCAL_SLOTS).")] = None,
    local_requantize: Annotated[Optional[Literal["auto", "q8_0", "q4_0", "off"]], typer.Option(
        help="Weights a local model loads: auto (default, or CAI_LOCAL_REQUANTIZE): the shipped GGUF requantized "
             "once to Q8_0 in cai's cache folder, a file of your own as it is; q8_0 or q4_0: requantized; off: as "
             "the file has them (see docs/local.md).")] = None,
    rbr: Annotated[bool, typer.Option(help="Rule-based rewards: grade the draft and each revision, tell the "
                                           "reviser what failed, put rewards on the pairs.")] = False,
    grader: Annotated[Optional[str], typer.Option(help="Model that grades propositions (default: the critic).")] = None,
    rbr_constitution: Annotated[Optional[str], typer.Option(help="Constitution with propositions (default: the "
                                                                 "run's if it has them, else rbr-safety).")] = None,
    grader_mode: Annotated[Literal["separate", "joint"], typer.Option(
        help="A call per proposition, or one structured call per response.")] = "separate",
    votes: Annotated[int, typer.Option(min=1, help="Sampled answers per question without logprobs.")] = 3,
    weights: Annotated[Optional[Path], typer.Option(help="Reward weights JSON (default: shipped).")] = None,
    rbr_feedback: Annotated[bool, typer.Option(help="Give the reviser the failed propositions/checks.")] = True,
    min_reward_margin: Annotated[Optional[float], typer.Option(
        help="Drop pairs whose reward improved by less.")] = None,
    candidates: Annotated[int, typer.Option(min=1, help="AI preference labels: responses sampled per prompt "
                                                        "(the draft and K-1 more); 2 or more are judged "
                                                        "pairwise.")] = 1,
    candidates_from: Annotated[Literal["samples", "revisions", "samples+revisions"], typer.Option(
        help="Candidates to judge: the samples, the draft and its revisions, or both.")] = "samples",
    judge: Annotated[Optional[str], typer.Option(help="Model that judges candidates (default: the critic).")
                     ] = None,
    cot: Annotated[bool, typer.Option(help="The judge reasons before answering (labels clamped to [0.4, 0.6]).")
                   ] = False,
    min_margin: Annotated[Optional[float], typer.Option(
        min=0.0, max=0.5, help="Keep a labeled pair only if P(chosen ≻ rejected) - 0.5 exceeds this (default 0).")
                          ] = None,
    rank_by: Annotated[Optional[Literal["judge", "rbr", "judge+rbr"]], typer.Option(
        help="Rank candidates by the judge (default), the RBR reward, or both (needs --rbr).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON to stdout.")] = False,
    quiet: Annotated[bool, typer.Option(help="No progress display.")] = False,
) -> None:
    """Draft, critique and revise every prompt; write sft/pairs/critiques and a manifest.

    Example: cai run examples/prompts.jsonl --out runs/demo --limit 4 --max-tokens 64
    """
    from cai.api import arun
    from cai.prices import load_prices
    from cai.progress import Progress
    from cai.runs import normalize_out

    out = normalize_out(out or Path("runs") / input.stem)
    progress = Progress(quiet=quiet, prices=load_prices(str(prices) if prices else None))
    argv = ["cai", *sys.argv[1:]]
    try:
        result = run_async(arun(
            input, out=out, model=model, generator=generator, critic=critic, reviser=reviser, base_url=base_url,
            constitution=constitution or "default", rounds=rounds, stop_when_clean=stop_when_clean, fewshot=fewshot,
            max_tokens=max_tokens, temperature=temperature, seed=seed, concurrency=concurrency, limit=limit,
            max_retries=max_retries,
            timeout=timeout, rpm=rpm, tpm=tpm, format=format, system_role_for_developer=system_role_for_developer,
            restart=restart, retry_failed=retry_failed, prices=prices, cache=cache, engine=engine,
            ray_address=ray_address, workers=workers, local_slots=local_slots,
            local_requantize=local_requantize, rbr=rbr, grader=grader,
            rbr_constitution=rbr_constitution, grader_mode=grader_mode, votes=votes, weights=weights,
            rbr_feedback=rbr_feedback, min_reward_margin=min_reward_margin, candidates=candidates,
            candidates_from=candidates_from, judge=judge, cot=cot, min_margin=min_margin, rank_by=rank_by,
            progress=progress, command=argv))
    except Interrupted:
        raise Interrupted("interrupted; every committed step is kept. Resume with:\n  "
                          + resume_command(argv)) from None
    finally:
        progress.stop()
    manifest = result.manifest
    manifest["this_invocation"] = {**(result.invocation or {}), **progress.summary()}
    manifest["out"] = str(out)
    failed = manifest["records"].get("failed", 0)
    if as_json:
        emit(manifest)
    err.print(summary_line(manifest), markup=False, highlight=False)
    cache_report = manifest["this_invocation"].get("call_cache") or {}
    if cache_report.get("failed"):
        err.print(f"warning: stopped writing the call cache ({cache_report['failed']}); the run is complete",
                  markup=False, highlight=False)
    if failed:
        err.print(f"{failed} record(s) failed; see `cai status {quote(str(out))}`. Retry them with:\n  "
                  f"{retry_command(argv)}", markup=False, highlight=False)
        raise typer.Exit(1)


add_submit(run)
app.command("label")(label)
app.command("judge-eval")(judge_eval)


@app.command("export")
@fails_cleanly
def export_cmd(
    ctx: typer.Context,
    run_dir: Annotated[Path, typer.Argument(help="A run folder, e.g. runs/demo.")],
    format: Format = "jsonl",
    system_role_for_developer: Annotated[Optional[bool], typer.Option(
        "--system-role-for-developer/--keep-developer-role",
        help="Write `developer` turns as `system` (default: what the run was started with).")] = None,
    hf: Annotated[Optional[Path], typer.Option(
        "--hf", help="Instead, write a Hugging Face dataset folder here: sft/ and pairs/ Parquet and a README.md "
                     "dataset card. Only reads the run (no lock: fine while it runs); its own files are left alone.")
                  ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the manifest (with --hf: the summary) as JSON.")
                       ] = False,
) -> None:
    """Rebuild the exports and manifest of a run from its store (files of the other format are removed).

    Example: cai export runs/demo --format parquet     (or --hf datasets/demo for a Hugging Face dataset)
    """
    from cai.api import open_run

    if hf is not None:
        from cai.errors import InputError
        from cai.hf import write_hf

        if getattr(ctx.get_parameter_source("format"), "name", None) == "COMMANDLINE":
            raise InputError("--format is for the run's own exports; --hf always writes Parquet")
        info = write_hf(run_dir, hf, developer_as_system=system_role_for_developer)
        if as_json:
            emit(info)
        err.print(f"wrote {hf}/: {info['rows']['sft']} sft, {info['rows']['pairs']} pairs and a dataset card "
                  "(README.md)", markup=False, highlight=False)
        return
    manifest = open_run(run_dir).export(format, developer_as_system=system_role_for_developer)
    if as_json:
        emit(manifest)
    ex = manifest["exports"]
    err.print(f"wrote {run_dir}/: {ex['sft']} sft, {ex['pairs']} pairs, {ex['critiques']} critiques", markup=False)


@app.command("report")
@fails_cleanly
def report_cmd(
    run_dir: Annotated[Path, typer.Argument(help="A run folder, e.g. runs/demo.")],
    out: Annotated[Optional[Path], typer.Option("--out", help="Where to write the HTML "
                                                              "(default RUN_DIR/report.html).")] = None,
) -> None:
    """Write one self-contained HTML report of a run: overview, plots, and every record with its critiques
    and word diffs (no network needed to view it). Reads the run read-only, also while it is being written.

    Example: cai report runs/demo
    """
    from cai.report import write_report

    path = write_report(run_dir, out)
    err.print(f"wrote {path}", markup=False, highlight=False)


@app.command()
@fails_cleanly
def status(
    run_dir: Annotated[Path, typer.Argument(help="A run folder, e.g. runs/demo.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
) -> None:
    """Show done / in progress / failed / not started, tokens, errors and how to resume; never writes.
    Exits 1 if records failed.

    Example: cai status runs/demo --json
    """
    from cai.api import open_run

    info = open_run(run_dir).status()
    if as_json:
        emit(info)
    else:
        c = info["records"]
        state = f"running (pid {info['running_pid']})" if info["running_pid"] is not None else "not running"
        err.print(f"{run_dir}: {state}; {c['done']} done, {c['in_progress']} in progress, {c['failed']} failed, "
                  f"{c['not_started']} not started (of {c['input']})", markup=False, highlight=False)
        for role, t in info["tokens"].items():
            err.print(f"  {role}: {t['calls']} calls, {t['tokens_in']} in, {t['tokens_out']} out", markup=False)
        for e in info["errors"]:
            mark = " (resolved: the record later succeeded)" if e["resolved"] else ""
            err.print(f"  failed {e['id']} at {e['stage']}: {e['error_class']}: {e['message']}{mark}",
                      markup=False, highlight=False)
        if info["resume"]:
            err.print(f"resume: {info['resume']}", markup=False, highlight=False)
        if c["failed"] and info["retry_failed"]:
            err.print(f"retry failed records: {info['retry_failed']}", markup=False, highlight=False)
    if info["records"]["failed"]:
        raise typer.Exit(1)


def main() -> None:
    app(prog_name="cai")
