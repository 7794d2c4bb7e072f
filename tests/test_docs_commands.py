"""Every `cai` command in README.md and docs/*.md, as written: each is one the command line accepts (the
command exists, every option is one of its options with the right number of values, fixed-value options
name an allowed value), checked with the parser alone; and the cheap ones (RUNNABLE) run against the loopback
stub server in a fresh folder. Commands on the embedded model, a Ray cluster, a batch API or the Hugging Face
Hub are checked by the parser only."""

from __future__ import annotations

import json
import re
import shlex
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import typer

from cai.cli import app
from helpers import REPO, cai
from servers import StubServer

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
FENCE = re.compile(r"^```([\w-]*)[^\n]*\n(.*?)^```", re.S | re.M)
SHELL_FENCES = {"bash", "sh", "shell", "console", ""}
SEPARATORS = {";", "&&", "||", "|", "&"}
REDIRECTS = {">", ">>", "<", "2>", "&>"}
ENV_PREFIX = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
# docs/architecture.md's example command plugin: not a command of cai itself (tests/test_architecture.py
# installs it and runs that example).
PLUGIN_COMMANDS = {("architecture.md", "count")}

# The commands that run here, as the docs write them (comments dropped, spaces collapsed), with the exit code
# the doc promises. Every one must still be in the docs. They run in a fresh copy of `workdir`, with
# OPENAI_BASE_URL / ANTHROPIC_BASE_URL at the stub and any `--base-url` value replaced by the stub's URL.
RUNNABLE: dict[str, int] = {
    "cai run prompts.jsonl --model openai:gpt-4o-mini": 0,
    "cai run prompts.jsonl --model openai:any --base-url http://127.0.0.1:8000/v1": 0,
    "cai status runs/x": 0,
    "cai export runs/x --format parquet": 0,
    "cai export runs/x --hf datasets/x": 0,
    "cai constitution list": 0,
    "cai constitution show model-spec": 0,
    "cai constitution show examples/constitution/team.yaml": 0,
    "cai constitution show model-spec examples/constitution/team.yaml": 0,
    "cai constitution schema -o constitution.schema.json": 0,
    "cai report runs/demo": 0,
    "cai rbr metrics runs/x": 0,
    "cai rbr metrics runs/xstest --json": 0,
    "cai rbr metrics runs/xstest --refusal-method both --grader openai:gpt-4o-mini": 0,
    "cai rbr refusal-eval labelled.jsonl --json": 0,
    "cai rbr refusal-eval labelled.jsonl": 0,
    "cai constitution validate --stack model-spec examples/constitution/team.yaml examples/constitution/user.yaml": 0,
    "cai constitution diff model-spec examples/constitution/team.yaml": 1,  # they differ
    "cai label runs/demo": 0,
    "cai review import runs/demo reviews.jsonl": 0,
    "cai review export runs/demo -o reviews.jsonl": 0,
    "cai label rows.jsonl --judge openai:gpt-4o-mini": 0,
    "cai judge-eval runs/demo/pairs.jsonl --judge openai:gpt-4o-mini --json": 0,
    "cai rbr refusal-eval bench/data/refusal_written_d.jsonl": 0,
    "cai rbr refusal-eval bench/data/refusal_written_c.jsonl --json": 0,
    "cai estimate prompts.jsonl --model openai:gpt-4o-mini --rbr --candidates 3 --json": 0,
    "cai estimate prompts.jsonl --model openai:gpt-4o-mini --out runs/x": 0,
}


@dataclass(frozen=True)
class DocCommand:
    where: str  # "docs/rbr.md:8"
    text: str  # one command as written, comments dropped, spaces collapsed
    argv: tuple[str, ...]  # what follows `cai`
    env: dict[str, str] = field(default_factory=dict, hash=False, compare=False)


def shell_lines(lang: str, body: str) -> list[tuple[int, str]]:
    """(offset, line) of every shell command line of a fence body, `\\` continuations joined. In a console or
    an unlabelled fence only `$ ` lines (console) or lines that start with `cai ` are commands."""
    out: list[tuple[int, str]] = []
    pending, start = "", 0
    for i, raw in enumerate(body.splitlines()):
        line = raw.rstrip()
        if not pending:
            start = i
            if lang == "console" or lang == "":
                if line.startswith("$ "):
                    line = line[2:]
                elif not (lang == "" and line.startswith("cai ")):
                    continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        out.append((start, pending + line))
        pending = ""
    return out


def split_commands(line: str) -> list[tuple[dict[str, str], list[str]]]:
    """(env prefix, argv) of each simple command of a shell line: split at ; && || | &, redirections and
    comments dropped."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    commands: list[tuple[dict[str, str], list[str]]] = []
    words: list[str] = []
    tokens = list(lexer)
    skip = False
    for tok in [*tokens, ";"]:
        if skip:
            skip = False
        elif tok in REDIRECTS:
            skip = True
        elif tok in SEPARATORS:
            env = {}
            while words and ENV_PREFIX.match(words[0]):
                key, _, value = words.pop(0).partition("=")
                env[key] = value
            if words:
                commands.append((env, words))
            words = []
        else:
            words.append(tok)
    return commands


def cai_argv(words: list[str]) -> list[str] | None:
    """What follows `cai` (or `python -m cai`), or None for another program."""
    if words[0] == "cai":
        return words[1:]
    if words[:3] in (["python", "-m", "cai"], ["python3", "-m", "cai"]):
        return words[3:]
    return None


def doc_commands() -> list[DocCommand]:
    found = []
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        for m in FENCE.finditer(text):
            if m.group(1) not in SHELL_FENCES:
                continue
            first = text.count("\n", 0, m.start(2)) + 1
            for offset, line in shell_lines(m.group(1), m.group(2)):
                for env, words in split_commands(line):
                    argv = cai_argv(words)
                    if argv is not None:
                        where = f"{doc.relative_to(REPO)}:{first + offset}"
                        found.append(DocCommand(where, " ".join(["cai", *argv]), tuple(argv), env))
    return found


COMMANDS = doc_commands()


def parse_error(argv: list[str], doc: str) -> str | None:
    """Why the parser of `cai` would refuse `argv`, or None. Parses only: no callback runs, no value is
    converted except a fixed-value option's, and no file is looked at."""
    command: Any = typer.main.get_command(app)
    parent, name, args = None, "cai", list(argv)
    while hasattr(command, "list_commands"):  # a command group: its own options, then a subcommand
        ctx = command.context_class(command, info_name=name, parent=parent, **command.context_settings)
        _, rest, _ = command.make_parser(ctx).parse_args(args=args)
        if not rest:
            return f"{ctx.command_path}: no subcommand"
        if rest[0] not in command.list_commands(ctx):
            plugin = (Path(doc.split(":")[0]).name, rest[0]) in PLUGIN_COMMANDS
            return None if plugin else f"{ctx.command_path}: no command {rest[0]!r}"
        parent, name, args = ctx, rest[0], rest[1:]
        command = command.get_command(ctx, name)
    ctx = command.context_class(command, info_name=name, parent=parent, **command.context_settings)
    try:
        values, extra, _ = command.make_parser(ctx).parse_args(args=args)
    except Exception as e:  # noqa: BLE001 - click's UsageError, from whichever click typer carries
        return f"{ctx.command_path}: {e}"
    if extra:
        return f"{ctx.command_path}: unexpected extra arguments {extra}"
    for param in command.params:
        value = values.get(param.name)
        if param.param_type_name == "argument" and param.required and value in (None, ()):
            return f"{ctx.command_path}: missing argument {param.name}"
        choices = choices_of(param)
        if choices is not None and value is not None:
            for v in value if isinstance(value, (list, tuple)) else [value]:
                if v not in choices:
                    return f"{ctx.command_path}: {param.opts[0]} {v!r} is not one of {choices}"
    return None


def choices_of(param: Any) -> list[str] | None:
    """The values a fixed-value parameter allows (typer's own parameter types, or click's Choice)."""
    described = getattr(param, "type_descriptor", None)
    if described is not None:
        choices = described.choices if described.is_choice else None
    else:
        choices = getattr(getattr(param, "type", None), "choices", None)
    return None if choices is None else [str(getattr(c, "value", c)) for c in choices]


def test_the_docs_have_commands() -> None:
    docs = {c.where.split(":")[0] for c in COMMANDS}
    assert len(COMMANDS) >= 50 and {"README.md", "docs/rbr.md", "docs/constitution.md"} <= docs


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: f"{c.where} {c.text}")
def test_the_parser_accepts_every_documented_command(command: DocCommand) -> None:
    assert parse_error(list(command.argv), command.where) is None, f"{command.where}: {command.text}"


def test_the_parser_check_catches_what_it_should() -> None:
    assert parse_error(["run", "p.jsonl", "--no-such-option"], "README.md") is not None
    assert parse_error(["run", "p.jsonl", "--limit"], "README.md") is not None  # a value missing
    assert parse_error(["export", "runs/x", "--format", "csv"], "README.md") is not None  # not a choice
    assert parse_error(["rbr", "nothing", "x"], "README.md") is not None
    assert parse_error(["status"], "README.md") is not None  # its argument missing
    assert parse_error(["status", "a", "b"], "README.md") is not None
    assert parse_error(["count", "runs/x"], "docs/architecture.md") is None
    assert parse_error(["count", "runs/x"], "README.md") is not None


def test_commands_are_read_as_a_shell_would() -> None:
    body = "$ CAI_X=1 cai run a.jsonl \\\n    --limit 2 | tee log  # a comment\nok\n$ echo hi && cai status x > o\n"
    lines = [line for _, line in shell_lines("console", body)]
    cmds = [c for line in lines for c in split_commands(line)]
    assert cmds == [({"CAI_X": "1"}, ["cai", "run", "a.jsonl", "--limit", "2"]), ({}, ["tee", "log"]),
                    ({}, ["echo", "hi"]), ({}, ["cai", "status", "x"])]


# ---- the cheap ones, run --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stub() -> Any:
    with StubServer() as srv:
        yield srv


@pytest.fixture(scope="module")
def workdir(stub: StubServer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with what the docs' commands expect to find: examples/, a prompts.jsonl, a labelled.jsonl and
    runs made on the stub (runs/x, runs/demo, runs/xstest)."""
    work = tmp_path_factory.mktemp("docs") / "work"
    shutil.copytree(REPO / "examples", work / "examples")
    shutil.copytree(REPO / "bench" / "data", work / "bench" / "data")
    rows = (REPO / "examples" / "prompts.jsonl").read_text(encoding="utf-8").splitlines()
    (work / "prompts.jsonl").write_text("\n".join(rows[:3]) + "\n", encoding="utf-8")
    expected = [r for r in rows if '"expected"' in r]
    (work / "xstest.jsonl").write_text("\n".join(expected) + "\n", encoding="utf-8")
    labelled = (REPO / "bench" / "data" / "refusal_written_d.jsonl").read_text(encoding="utf-8").splitlines()
    (work / "labelled.jsonl").write_text("\n".join(labelled[:20]) + "\n", encoding="utf-8")
    responses = {"prompt": "Name a colour.", "responses": ["Blue.", "Red, like a fire engine."]}
    (work / "rows.jsonl").write_text(json.dumps(responses) + "\n", encoding="utf-8")
    first = json.loads(rows[0])["id"]  # a decision on the first critique of runs/demo (docs/review.md)
    decision = {"id": first, "item": "critique", "round": 1, "decision": "agree", "reviewer": "ann"}
    (work / "reviews.jsonl").write_text(json.dumps(decision) + "\n", encoding="utf-8")
    for name, prompts in (("x", "prompts.jsonl"), ("demo", "prompts.jsonl"), ("xstest", "xstest.jsonl")):
        made = cai("run", work / prompts, "--model", "openai:stub", "--base-url", stub.url, "--out",
                   work / "runs" / name, "--quiet", env={"OPENAI_API_KEY": "sk-test"})
        assert made.exit_code == 0, made.stderr
    return work


def runnable() -> list[DocCommand]:
    first: dict[str, DocCommand] = {}
    for command in COMMANDS:
        first.setdefault(command.text, command)
    return [first.get(text) or DocCommand("(not in the docs)", text, ()) for text in RUNNABLE]


@pytest.mark.parametrize("command", runnable(), ids=lambda c: c.text)
def test_the_cheap_commands_run_as_written(command: DocCommand, workdir: Path, stub: StubServer,
                                           tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert command.argv, f"{command.text!r} is in RUNNABLE but in no doc: update RUNNABLE"
    if command.argv[0] == "report":
        pytest.importorskip("matplotlib", reason="cai report needs the report extra")
    work = tmp_path / "work"
    shutil.copytree(workdir, work)
    monkeypatch.chdir(work)
    argv = list(command.argv)
    for i, word in enumerate(argv[:-1]):
        if word == "--base-url":
            argv[i + 1] = stub.url
    env = {"OPENAI_BASE_URL": stub.url, "OPENAI_API_KEY": "sk-test", "ANTHROPIC_BASE_URL": stub.anthropic_url,
           "ANTHROPIC_API_KEY": "sk-test", **command.env}
    result = cai(*argv, env=env)
    assert result.exit_code == RUNNABLE[command.text], f"{command.where}: {command.text}\n{result.stderr}"


# ---- docs/rbr.md's figures on the shipped labelled sets -------------------------------------------------------

WRITTEN_SETS = {"A": "refusal_written.jsonl", "B": "refusal_written_b.jsonl", "C": "refusal_written_c.jsonl",
                "D": "refusal_written_d.jsonl"}


def test_the_refusal_figures_in_docs_rbr_are_the_classifiers_today() -> None:
    """Each "written set X" row of docs/rbr.md's table is what the refusal classifier scores on that file now."""
    from cai.rbr.refusal_eval import classify_rows, evaluate, read_labelled

    table = re.findall(r"^\| written set (\w) \| (\d+) \|[^|]*\|[^|]*\| \**([\d. /]+?)\** \| \**([\d.]+)\** \| "
                       r"([\d. /]+) \|$", (REPO / "docs" / "rbr.md").read_text(encoding="utf-8"), flags=re.M)
    assert {row[0] for row in table} == set(WRITTEN_SETS)
    for name, rows, binary, partial, three in table:
        labelled = read_labelled(REPO / "bench" / "data" / WRITTEN_SETS[name])
        got = evaluate(labelled, classify_rows(labelled))
        b, t = got["binary"], got["three_way"]
        assert [rows, binary, partial, three] == [
            str(got["rows"]), " / ".join(f"{b[k]:.3f}" for k in ("accuracy", "precision", "recall")),
            f"{b['partial_recall']:.3f}", f"{t['accuracy']:.3f} / {t['macro_f1']:.3f}"], f"written set {name}"
