"""`cai batch …`: submit, tick, status, cancel. A thin layer over `cai.batch`; cai.cli.commands mounts `batch_app`
and adds `submit` with `add_submit()`: `cai batch submit` takes the loop options of `cai run` (`cai.options`).
The library is imported inside the commands (as in cai.cli.commands), so that `cai --help` starts fast.

Exit codes (for cron): 0 progress made or nothing more to do, 1 records failed in this pass, 2 bad input or
configuration, 3 another cai process holds the run folder, 4 the provider's batch API is unusable right now
(the next tick tries again), 5 the budget (--max-cost) stops the job, 75 still waiting on the provider,
130 interrupted.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from cai.cli.kit import emit, fails_cleanly, run_async, say
from cai.cli.options import PanelCommand, given, signature

if TYPE_CHECKING:
    from cai.batch.job import TickReport

EXIT_HELP = ("Exit codes: 0 progress made or nothing more to do, 1 records failed, 2 bad input or configuration, "
             "3 the run folder is in use (another tick or cai run), 4 the batch API is unusable now, 5 the budget "
             "(--max-cost) stops the job, 75 still waiting on the provider, 130 interrupted.")
batch_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None,
                        context_settings={"help_option_names": ["-h", "--help"]},
                        help="Scheduled batch jobs at the providers' batch price: submit once, tick from cron.\n\n"
                             "\b\nExample:\n  cai batch submit prompts.jsonl --model openai:gpt-4o-mini --out "
                             f"runs/nightly\n  cai batch tick runs/nightly\n\n{EXIT_HELP}")
RunDir = Annotated[Path, typer.Argument(help="The job's run folder, e.g. runs/nightly.")]
AsJson = Annotated[bool, typer.Option("--json", help="Print the result as JSON to stdout.")]
MaxCost = Annotated[Optional[float], typer.Option(  # noqa: UP045 (typer reads Optional)
    "--max-cost", min=0, help="A new budget in USD for the job, higher or lower, kept by later ticks: a request is "
    "submitted only if its worst case at the batch price fits in what is left. Default: the job's.")]


def _cost(usd: float | None) -> str:
    """The job's cost so far as `cai batch tick` and `cai batch status` print it (`cai.batch.api.cost_so_far`)."""
    return "unknown (no price for a model)" if usd is None else f"${usd:.4f}"


def _budget_line(budget: dict[str, Any] | None) -> str:
    """The budget as `cai batch tick` and `cai batch status` print it: spent, reserved in flight, limit."""
    if not budget or budget.get("max_cost_usd") is None:
        return ""
    spent = "unknown (no price for a model)" if budget["spent_usd"] is None else f"${budget['spent_usd']:.4f}"
    return (f"{spent} spent and ${budget['reserved_usd']:.4f} reserved in flight of ${budget['max_cost_usd']:.4f} "
            "(--max-cost)")


def _summary(r: TickReport) -> str:
    parts = []
    if r.recovered:
        parts.append(f"recovered {r.recovered} batch(es) whose create reply was lost")
    if r.stored or r.request_failures:
        parts.append(f"stored {r.stored} answers" + (f", {r.request_failures} requests failed (sent again up to "
                                                      "--max-retries)" if r.request_failures else ""))
    for b in r.submitted:
        stages = ", ".join(f"{n} {s}" for s, n in b["stages"].items())
        bid = b["batch_id"] or "(create reply lost: found again by the next tick)"
        parts.append(f"submitted {bid} to {b['model']}: {b['requests']} requests ({stages})")
    if r.paused:
        parts.append("cancelled: no new batches until `cai batch submit`")
    if r.over_budget:
        wait = "a higher budget" if r.budget_stopped else "what the batches in flight leave, or a higher budget"
        parts.append(f"budget {'reached' if r.budget_stopped else 'short'}: {_budget_line(r.budget)}; "
                     f"{r.over_budget} requests wait for {wait} (cai batch tick {r.out} --max-cost USD)")
    head = "; ".join(parts) or (f"waiting on {r.open_batches} batch(es)" if r.open_batches else "nothing to do")
    tail = (f"{r.done_now} done and {r.failed_now} failed in this pass, {r.waiting} waiting, "
            f"{r.open_batches} batch(es) open, estimated cost so far {_cost(r.estimated_cost_usd)}")
    if r.manifest is not None:
        ex = r.manifest["exports"]
        done = "complete: wrote" if r.complete else "wrote what is done:"
        tail += f"; {done} {ex['sft']} sft, {ex['pairs']} pairs, {ex['critiques']} critiques"
    elif r.complete:
        tail += "; complete"
    return f"{r.out}: {head}. {tail} (exit {r.exit_code})"


def _finish(report: TickReport, as_json: bool) -> None:
    if as_json:
        emit(report.to_dict())
    say(_summary(report))
    if report.exit_code:
        raise typer.Exit(report.exit_code)


def add_submit() -> None:
    """Add `cai batch submit`: the options of `cai run` that mean something for a batch job (`cai.options`), under
    the same names, defaults and help. cai.cli.commands calls it after `cai run`, so that it is listed last."""

    def submit(ctx: typer.Context, input: Path, as_json: bool, **options: Any) -> None:
        from cai.batch.api import asubmit
        from cai.runs import normalize_out

        options = given(ctx, options)
        out = normalize_out(options.pop("out", None) or Path("runs") / input.stem)
        report = run_async(asubmit(input, out=out, command=["cai", *sys.argv[1:]], **options))
        _finish(report, as_json)

    submit.__signature__ = signature(batch=True)  # type: ignore[attr-defined]
    submit.__doc__ = ("Validate the prompts as `cai run` does and submit the next stage of every record not yet "
                      "done as one provider batch per model; returns at once. Takes every loop option of `cai run`; "
                      "a prompts file that only grew adds its new rows. Needs openai: or anthropic: models "
                      "(--model): local, the default of cai run, has no batch API.\n\n"
                      "\b\nExample:\n  cai batch submit prompts.jsonl --model openai:gpt-4o-mini \\\n"
                      "    --out runs/nightly --rounds 1")
    batch_app.command("submit", cls=PanelCommand)(fails_cleanly(submit))


@batch_app.command()
@fails_cleanly
def tick(run_dir: RunDir, max_cost: MaxCost = None, as_json: AsJson = False) -> None:
    """One pass, for cron or a systemd timer: store finished batch results, submit the next stage of the records
    they made ready (what fits in the budget), export once every record is done or the budget stops the job (5).
    Exits at once if another tick holds the folder (3).

    Example: cai batch tick runs/nightly >> runs/nightly/batch.log 2>&1
    """
    from cai.batch.api import atick

    _finish(run_async(atick(run_dir, max_cost=max_cost, command=["cai", *sys.argv[1:]])), as_json)


@batch_app.command("status")
@fails_cleanly
def status_cmd(run_dir: RunDir, as_json: AsJson = False) -> None:
    """Where a job stands: records, stages in flight, batches with their age and counts, cost so far. Read-only.

    Example: cai batch status runs/nightly
    """
    from cai.batch.api import status

    info = status(run_dir)
    if as_json:
        emit(info)
        return
    c = info["records"]
    state = "cancelled" if info["paused"] else "complete" if not c["waiting"] and not info["open_batches"] else "open"
    say(f"{run_dir}: {state}; {c['done']} done, {c['failed']} failed, {c['waiting']} waiting (of {c['input']}); "
        f"{info['invocations']} invocations (submits and ticks); estimated cost so far "
        f"{_cost(info['estimated_cost_usd'])}")
    if line := _budget_line(info["budget"]):
        say(f"  budget: {line}")
    for s in info["stages"]:
        say(f"  in flight: {s['requests']} {s['stage']}" + (f" round {s['round']}" if s["round"] else ""))
    for b in info["batches"]:
        if b["state"] == "ended":
            continue
        counts = ", ".join(f"{k} {v}" for k, v in sorted(b["counts"].items()))
        say(f"  {b['batch_id'] or '(being identified)'} {b['model']}: {b['provider_status'] or b['state']}, "
            f"{b['requests']} requests{f' ({counts})' if counts else ''}, age {b['age_s']:.0f} s")
    done = sum(1 for b in info["batches"] if b["state"] == "ended")
    say(f"  {done} batch(es) ended; requests: " + ", ".join(f"{k} {v}" for k, v in sorted(info["requests"].items())))


@batch_app.command("cancel")
@fails_cleanly
def cancel_cmd(run_dir: RunDir, as_json: AsJson = False) -> None:
    """Cancel the job's open provider batches and submit no more; what already finished is kept (the next tick
    stores it). `cai batch submit` with the same options resumes the job.

    Example: cai batch cancel runs/nightly
    """
    from cai.batch.api import acancel

    info = run_async(acancel(run_dir))
    if as_json:
        emit(info)
    ids = ", ".join(info["cancelled"]) or "none open"
    more = f"; {len(info['ended'])} had ended already" if info["ended"] else ""
    more += (f"; {info['unidentified']} batch(es) whose create reply was lost are not known yet (the next tick "
             "finds them and stores what they answered)") if info["unidentified"] else ""
    say(f"{run_dir}: cancelled {ids}{more}; the next tick stores what finished")
