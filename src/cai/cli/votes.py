"""`cai constitution import-votes`: a thin command over `cai.constitution.votes` (cai.cli.commands registers it).
The library is imported inside the command, so that `cai --help` starts fast."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from cai.cli.kit import emit, fails_cleanly, say


@fails_cleanly
def import_votes(
    path: Annotated[Path, typer.Argument(help="A votes CSV (statement, agree, disagree, pass[, agree_<group>, "
                                              "...]) or a Polis export folder (comments.csv + "
                                              "participants-votes.csv).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="The constitution YAML to write.")],
    min_votes: Annotated[int, typer.Option(min=1, help="Keep a statement only with at least this many agree + "
                                                       "disagree votes, overall and in every group.")] = 10,
    min_agree: Annotated[float, typer.Option(min=0.0, max=1.0, help="Keep a statement only if its agree share "
                                                                    "(of agree + disagree) is at least this, "
                                                                    "overall and in every group.")] = 0.7,
    name: Annotated[Optional[str], typer.Option(help="The constitution's name (default: the output file's "
                                                     "stem).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the kept and dropped statements as JSON to "
                                                         "stdout.")] = False,
) -> None:
    """Turn public votes on statements into a constitution layer: one principle per statement that enough
    people voted on and agreed with, in every opinion group; moderated-out statements are never kept.

    Example: cai constitution import-votes polis-export/ -o constitution/public.yaml
    """
    from cai.constitution.votes import read_votes, select, write_layer
    from cai.errors import InputError

    result = select(read_votes(path), min_votes=min_votes, min_agree=min_agree)
    if result.kept:
        write_layer(result, output, name)
    for w in result.votes.warnings:
        say(f"warning: {w}")
    dropped = result.dropped
    reasons = ", ".join(f"{r} {n}" for r in ("moderated_out", "too_few_votes", "below_min_agree", "divisive")
                        if (n := sum(d.reason == r for d in dropped)))
    where = f"wrote {output}" if result.kept else "nothing written"
    say(f"{path}: kept {len(result.kept)} of {len(result.decisions)} statements, dropped {len(dropped)}"
        f"{f' ({reasons})' if reasons else ''}; {where}")
    for d in dropped:
        text = d.statement.text if len(d.statement.text) <= 80 else d.statement.text[:79] + "…"
        say(f"  dropped {d.statement.id} ({d.reason}): {d.detail}: {text}")
    if as_json:
        emit(result.to_dict())
    if not result.kept:
        raise InputError(f"no statement cleared min_votes {min_votes} and min_agree {min_agree:g}", path=str(path))
