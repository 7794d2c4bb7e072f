"""`cai review import | export | stats`: people's review decisions as JSONL, thin commands over `cai.read.run.Run`
(cai.cli.commands registers the group), and `cai review stats` over `cai.read.review_stats`. The library is imported
inside the commands, so that `cai --help` starts fast."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cai.cli.kit import fails_cleanly, say

HELP = {"help_option_names": ["-h", "--help"]}
review_app = typer.Typer(no_args_is_help=True, context_settings=HELP,
                         help="People's review decisions on a run's critiques and pairs, kept in the run folder "
                              "(reviews.sqlite). See docs/review.md.\n\n"
                              "Example: cai review export runs/demo -o reviews.jsonl")
RunDir = Annotated[Path, typer.Argument(help="A run folder, e.g. runs/demo.")]


@review_app.command("import")
@fails_cleanly
def review_import(
    run_dir: RunDir,
    file: Annotated[Path, typer.Argument(help="A JSONL file of decisions, one a line (docs/review.md).")],
) -> None:
    """Store the decisions of a JSONL file: every line is checked first and nothing is stored from a bad file;
    importing the same file again changes nothing. Works while the run is being written.

    Example: cai review import runs/demo reviews.jsonl
    """
    from cai.api import open_run

    changed = open_run(run_dir).import_reviews(file)
    say(f"{file}: {changed} decision{'s' if changed != 1 else ''} added or changed in {run_dir}")


@review_app.command("export")
@fails_cleanly
def review_export(
    run_dir: RunDir,
    output: Annotated[Path, typer.Option("--output", "-o", help="The JSONL file to write.")],
) -> None:
    """Write every decision of a run to a JSONL file, one a line, with the hash of the text it was about.

    Example: cai review export runs/demo -o reviews.jsonl
    """
    from cai.api import open_run

    n = open_run(run_dir).export_reviews(output)
    say(f"wrote {output}: {n} decision{'s' if n != 1 else ''}")


@review_app.command("stats")
@fails_cleanly
def review_stats(
    run_dir: RunDir,
    as_json: Annotated[bool, typer.Option("--json", help="Print every figure as JSON.")] = False,
) -> None:
    """How far people agree with the critic, the judge and each other, from the run's current decisions
    (stale ones left out and counted). See docs/review_stats.md.

    Example: cai review stats runs/demo --json
    """
    from cai.api import open_run
    from cai.cli.kit import emit

    stats = open_run(run_dir).review_stats()
    if as_json:
        emit(stats)
        return
    d = stats["decisions"]
    say(f"{run_dir}: {d['used']} decisions used ({d['stale']} stale, {d['superseded']} superseded, "
        f"{d['unmatched']} about items the run no longer has)")
    figures = [(f"the critic's {name.replace('_', ' ')} verdicts people agreed with", part)
               for name, part in stats["critic"]["overall"].items()]
    figures += [("revision pairs where people preferred the revision", stats["revision"]["preferred_revision"]),
                ("AI-labeled pairs where the judge agreed with people", stats["judge"]["agreement"])]
    for what, part in figures:
        if part["n"]:
            low, high = part["ci95"]
            say(f"  {what}: {part['k']} of {part['n']} ({part['share']:.0%}, 95% CI {low:.0%}–{high:.0%})")
