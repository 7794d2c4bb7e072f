"""`cai constitution list | show | validate | schema | diff`: thin commands over `cai.constitution` (cai.cli.commands
registers them, beside `import-votes`). The library is imported inside the commands, so that `cai --help`
starts fast."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from cai.cli.kit import fails_cleanly, say

HELP = {"help_option_names": ["-h", "--help"]}
constitution_app = typer.Typer(no_args_is_help=True, context_settings=HELP,
                               help="List, show, check and compare constitutions; build one from public votes.\n\n"
                                    "Layers stack platform → developer → user: give several (bottom first), or "
                                    "write `extends: NAME` in a file. See docs/constitution.md.\n\n"
                                    "Example: cai constitution show model-spec examples/constitution/team.yaml")
Layers = Annotated[list[str], typer.Argument(help="A shipped name or a YAML file; several are layers, bottom "
                                                  "(platform) first.")]


@constitution_app.command("list")
@fails_cleanly
def constitution_list(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """List the shipped constitutions, one line each: name, what it holds, description.

    Example: cai constitution list
    """
    from cai.constitution import builtin_names, load

    rows = []
    for n in builtin_names():
        c = load(n)
        rows.append({"name": n, "objectives": len(c.section("objectives")), "rules": len(c.section("rules")),
                     "defaults": len(c.section("defaults")), "principles": len(c.section("principles")),
                     "comparisons": len(c.comparisons), "propositions": len(c.propositions),
                     "description": c.description})
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    for r in rows:
        held = ", ".join(f"{r[k]} {k}" for k in ("objectives", "rules", "defaults", "principles") if r[k])
        print(f"{r['name']:<12} {held:<46} {r['description']}")


def _tag(p: Any) -> str:
    kind = p.kind or "principle"
    origin = f"{p.layer}, defined in {p.defined_in}" if p.defined_in else p.layer
    return f"[{kind}{'' if p.enabled else ', off'} · {origin}]"


@constitution_app.command("show")
@fails_cleanly
def constitution_show(
    layers: Layers,
    as_json: Annotated[bool, typer.Option("--json", help="The merged constitution as JSON (each principle with "
                                                         "its `layer`; other items' layers in `origin`).")] = False,
) -> None:
    """Show the merged constitution of one or more layers, each item tagged with its kind and the layer it
    came from (switched-off defaults are listed, marked off).

    Example: cai constitution show model-spec examples/constitution/team.yaml
    """
    from cai.constitution import load

    c = load(layers)
    if as_json:
        print(c.model_dump_json(indent=2, by_alias=True))
        return
    print(f"{c.name}: {c.description}")
    print(f"sha256 {c.sha256[:12]}  layers (bottom first): "
          + ", ".join(f"{x.name} ({x.path}, {x.sha256[:12]})" for x in c.layers))
    for p in c.principles:
        head = f"\n{p.id} {_tag(p)}" + (f" ({', '.join(p.tags)})" if p.tags else "")
        print(head + (f"\n  statement: {p.statement}" if p.statement else "")
              + f"\n  critique: {p.critique}\n  revision: {p.revision}")
    for item in c.comparisons:
        print(f"\n{item.id} [comparison · {c.origin.get(f'comparisons/{item.id}', '?')}]\n  question: {item.question}")
    for prop in c.propositions:
        print(f"\n{prop.id} [proposition · {c.origin.get(f'propositions/{prop.id}', '?')}]\n  "
              f"question: {prop.question}")
    for tname in c.response_types:
        print(f"\n{tname} [response type · {c.origin.get(f'response_types/{tname}', '?')}]")


@constitution_app.command("validate")
@fails_cleanly
def constitution_validate(
    files: Annotated[list[str], typer.Argument(help="Constitution files (or shipped names).")],
    stack: Annotated[bool, typer.Option("--stack", help="Check the files as one stack of layers, bottom first "
                                                        "(as `cai run --constitution A --constitution B`), so "
                                                        "that a later one weakening a rule is caught.")] = False,
) -> None:
    """Check constitution files (each with the layers it `extends`) and print every problem, one line each as
    FILE:LINE: what (not just the first); exits 2 if there is any.

    Example: cai constitution validate --stack model-spec team.yaml user.yaml
    """
    from cai.constitution import check

    total = 0
    for group in ([files] if stack else [[f] for f in files]):
        const, problems = check(group)
        for p in problems:
            say(str(p))
        total += len(problems)
        if const is not None and not problems:
            say(f"{' + '.join(x.path for x in const.layers)}: ok ({len(const.principles)} principles of which "
                f"{len(const.section('rules'))} rules, {len(const.comparisons)} comparisons, "
                f"{len(const.propositions)} propositions)")
    if total:
        say(f"{total} problem(s) in {len(files)} file(s)")
        raise typer.Exit(2)


@constitution_app.command("schema")
@fails_cleanly
def constitution_schema(
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Write it to this file (default: "
                                                                          "stdout).")] = None,
) -> None:
    """Print the JSON Schema of the constitution file format, one layer (for editors and CI checks).

    Example: cai constitution schema -o constitution.schema.json
    """
    from cai.constitution.tools import json_schema
    from cai.read.export import write_json

    schema = json_schema()
    if output is None:
        print(json.dumps(schema, indent=2))
        return
    write_json(output, schema)
    say(f"wrote {output}")


@constitution_app.command("diff")
@fails_cleanly
def constitution_diff(
    a: Annotated[str, typer.Argument(help="Shipped name or path to a YAML file (with the layers it extends).")],
    b: Annotated[str, typer.Argument(help="Shipped name or path to a YAML file (with the layers it extends).")],
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Show what changes from A to B, by id: principles (objectives, rules and defaults included), comparisons and
    propositions added (+), removed (-) and changed (~, with the fields), and the other sections that differ.

    Exit codes (like diff(1), for scripts and CI): 0 the same, 1 they differ, 2 a file is missing or invalid.

    Example: cai constitution diff model-spec examples/constitution/team.yaml
    """
    from cai.constitution import load
    from cai.constitution.tools import diff, diff_lines

    d = diff(load(a), load(b))
    if as_json:
        print(json.dumps(d, indent=2))
    else:
        print("\n".join(diff_lines(d)))
    if len(d) > 2:
        raise typer.Exit(1)
