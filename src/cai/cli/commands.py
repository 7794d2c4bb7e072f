"""The `cai` command. Logs and progress go to stderr; `--json` prints results to stdout.

Exit codes: 0 ok, 1 the run had failed records, 2 bad usage, input, files or disk, 3 the run folder is
in use by another cai process, 4 the model endpoint is unusable (unreachable, model not found),
130 interrupted. `cai batch` adds 75: still waiting on the provider (see cai.cli.batch).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

import typer

from cai import __version__, plugins
from cai.cli.batch import add_submit, batch_app
from cai.cli.constitution import constitution_app
from cai.cli.estimate import estimate
from cai.cli.kit import OneLineErrors, emit, err, fails_cleanly, renamed, run_async, say
from cai.cli.labels import judge_eval, label
from cai.cli.options import PanelCommand, given, run_option, signature
from cai.cli.rbr import rbr_app
from cai.cli.review import review_app
from cai.cli.votes import import_votes
from cai.errors import BudgetExhausted, Interrupted
from cai.options import ReviewMode, ReviewPolicy
from cai.read.cmdline import (
    gate_hint,
    quote,
    resume_command,
    retry_command,
    run_summary,
    summary_line,
    with_option,
)

HELP = {"help_option_names": ["-h", "--help"]}
app = typer.Typer(cls=OneLineErrors, add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  context_settings=HELP,
                  help="Make AI-feedback training data: draft, critique against a constitution, revise, export.\n\n"
                       "\b\nExample:\n  cai run examples/prompts.jsonl --out runs/demo --limit 6 --max-tokens 64\n\n"
                       "Exit codes: 0 ok, 1 some records failed, 2 bad usage, input, files or disk, 3 the run "
                       "folder is in use by another cai process, 4 the model endpoint is unusable, 130 interrupted.")
app.add_typer(constitution_app, name="constitution")
constitution_app.command("import-votes")(import_votes)
app.add_typer(rbr_app, name="rbr")
app.add_typer(batch_app, name="batch")
app.add_typer(review_app, name="review")


def _version(value: bool) -> None:
    if value:
        print(f"cai {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                help="Print the version and exit.")] = False) -> None:
    """cai: constitutional AI feedback data."""


Format = Annotated[Literal["jsonl", "parquet"], typer.Option(help="Export format.")]


def run(ctx: typer.Context, input: Path, as_json: bool, quiet: bool, **options: Any) -> None:
    """Draft, critique and revise every prompt; write sft/pairs/critiques and a manifest.

    \b
    Example:
      cai run examples/prompts.jsonl --out runs/demo --limit 4 --max-tokens 64
    """
    from cai.api import arun
    from cai.core.prices import load_prices
    from cai.core.progress import Progress
    from cai.runs import normalize_out

    options = given(ctx, options)
    out = normalize_out(options.pop("out", None) or Path("runs") / input.stem)
    prices = options.get("prices")
    progress = Progress(quiet=quiet, prices=load_prices(str(prices) if prices else None))
    argv = ["cai", *sys.argv[1:]]
    try:
        result = run_async(arun(input, out=out, progress=progress, command=argv, **options))
    except Interrupted:
        raise Interrupted("interrupted; every committed step is kept. Resume with:\n  "
                          + resume_command(argv)) from None
    except BudgetExhausted as e:
        progress.stop()
        manifest = getattr(e, "manifest", None)
        if manifest is not None:
            inv = {**(manifest.get("this_invocation") or {}), **progress.summary()}
            say(summary_line(run_summary({**manifest, "out": str(out), "this_invocation": inv})))
        raise BudgetExhausted(f"{e}. Continue with a higher budget:\n  "
                              + with_option(resume_command(argv), "--max-cost", f"{max(e.limit * 2, 0.01):g}"),
                              spent=e.spent, limit=e.limit, left=e.left) from None
    finally:
        progress.stop()
    manifest = result.manifest
    manifest["this_invocation"] = {**(result.invocation or {}), **progress.summary()}
    manifest["out"] = str(out)
    failed = manifest["records"].get("failed", 0)
    if as_json:
        emit(manifest)
    summary = run_summary(manifest)
    say(json.dumps({"event": "summary", **summary}) if progress.format == "json" else summary_line(summary))
    hint = gate_hint(manifest)
    if hint and progress.format != "json":
        say(hint)
    cache_report = manifest["this_invocation"].get("call_cache") or {}
    if cache_report.get("failed"):
        err.print(f"warning: stopped writing the call cache ({cache_report['failed']}); the run is complete",
                  markup=False, highlight=False)
    if failed:
        err.print(f"{failed} record(s) failed; see `cai status {quote(str(out))}`. Retry them with:\n  "
                  f"{retry_command(argv)}", markup=False, highlight=False)
        raise typer.Exit(1)


run.__signature__ = signature()  # type: ignore[attr-defined]
app.command(cls=PanelCommand)(fails_cleanly(run))
add_submit()
app.command("estimate", cls=PanelCommand)(fails_cleanly(estimate))
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
    to: Annotated[Optional[tuple[str, Path]], typer.Option(
        "--to", metavar="<NAME DEST>", help="Instead, write the run with the exporter plugin NAME into DEST (an "
                                            "installed 'exporter.NAME' of cai.plugins, e.g. hf; --hf DEST is --to hf "
                                            "DEST). Only reads the run.")] = None,
    reviews: Annotated[Optional[ReviewMode], run_option("reviews")] = None,
    review_policy: Annotated[Optional[ReviewPolicy], run_option("review_policy")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the manifest (with --hf: the summary) as JSON.")
                       ] = False,
) -> None:
    """Rebuild the exports and manifest of a run from its store (files of the other format are removed).

    Example: cai export runs/demo --format parquet     (or --hf datasets/demo for a Hugging Face dataset)
    """
    from cai.api import open_run

    if hf is not None or to is not None:
        from cai.errors import InputError

        if hf is not None and to is not None:
            raise InputError("give --hf DEST or --to NAME DEST, not both")
        if getattr(ctx.get_parameter_source("format"), "name", None) == "COMMANDLINE":
            raise InputError("--format is for the run's own exports; --hf always writes Parquet" if to is None
                             else "--format is for the run's own exports; --to writes its exporter's own format")
        name, dest = ("hf", hf) if hf is not None else to  # type: ignore[misc]
        given_reviews = {k: v for k, v in (("reviews", reviews), ("review_policy", review_policy)) if v is not None}
        info = plugins.load("exporter", name)(run_dir, dest, developer_as_system=system_role_for_developer,
                                              **given_reviews)
        if as_json:
            emit(info)
        rows = ", ".join(f"{n} {kind}" for kind, n in info["rows"].items())
        say(f"wrote {dest}/: {rows} and a dataset card (README.md)" if name == "hf" else f"wrote {dest}: {rows}")
        return
    from cai.read.decisions import reviewed_text

    manifest = open_run(run_dir).export(format, developer_as_system=system_role_for_developer, reviews=reviews,
                                        review_policy=review_policy)
    if as_json:
        emit(manifest)
    ex = manifest["exports"]
    err.print(f"wrote {run_dir}/: {ex['sft']} sft, {ex['pairs']} pairs, {ex['critiques']} critiques"
              + reviewed_text(manifest.get("reviews")), markup=False)


@app.command("report")
@fails_cleanly
def report_cmd(
    ctx: typer.Context,
    run_dir: Annotated[Path, typer.Argument(help="A run folder, e.g. runs/demo.")],
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Where to write the HTML "
                                                                          "(default RUN_DIR/report.html).")] = None,
    old_out: Annotated[Optional[Path], typer.Option("--out", hidden=True, metavar="FILE")] = None,
) -> None:
    """Write one self-contained HTML report of a run: overview, plots, and every record with its critiques
    and word diffs (no network needed to view it). Reads the run read-only, also while it is being written.

    Example: cai report runs/demo
    """
    from cai.report import write_report

    path = write_report(run_dir, renamed(ctx, "old_out", "output"))
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
    from cai.read.cmdline import budget_text
    from cai.read.decisions import reviewed_text
    from cai.read.quality import kept_text

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
        if info.get("budget"):
            err.print(f"  budget: {budget_text(info['budget'])}", markup=False, highlight=False)
        if info["exports"]:
            gate = (info["quality"] or {}).get("gate")
            err.print(f"  exports: {kept_text(info['exports'], info['quality'])}"
                      + (f" (quality gate: {gate})" if gate else "") + reviewed_text(info.get("reviews")),
                      markup=False, highlight=False)
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


def add_plugin_commands(target: typer.Typer) -> None:
    """Add every installed `command.NAME` plugin (`cai.plugins`) as `cai NAME`: a typer.Typer as a command group, a
    function as one command. One that cannot be loaded, or that would replace a command of cai's, is skipped with a
    line on stderr; cai itself still works."""
    taken = {c.name or (c.callback.__name__ if c.callback else "") for c in target.registered_commands}
    taken |= {g.name or "" for g in target.registered_groups}
    for name in plugins.names("command"):
        if name in taken:
            say(f"cai: skipped the command plugin {name!r}: cai has a command of that name")
            continue
        try:
            obj = plugins.load("command", name)
        except Exception as e:  # noqa: BLE001 - a broken third-party plugin must not take every command down
            say(f"cai: skipped the command plugin {name!r}: {type(e).__name__}: {e}")
            continue
        if isinstance(obj, typer.Typer):
            target.add_typer(obj, name=name)
        else:
            target.command(name)(fails_cleanly(obj))


def main() -> None:
    add_plugin_commands(app)
    app(prog_name="cai")
