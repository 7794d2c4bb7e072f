"""The run options are declared once (`cai.options`): every settings field has exactly one option, which is a
`cai run` option and a `cai.arun` keyword, and an error names only options the caller gave."""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Sequence
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import pytest
import typer.main
from pydantic import BaseModel

import cai
from cai.cli import app
from cai.errors import InputError
from cai.options import INPUT, NOT_OPTIONS, PANELS, RunOptions, declared
from cai.settings import RunSettings, option_field
from helpers import cai as cai_cli

SWITCHES = {"rbr", "restart"}  # options that set no settings field: rbr turns scoring on, restart is the call's
CLI_ONLY = {"ctx", "input", "as_json", "quiet"}


def settings_fields() -> set[str]:
    """Every "part.field" of RunSettings, read from the models."""
    out = set()
    for part, info in RunSettings.model_fields.items():
        model = next(t for t in (info.annotation, *get_args(info.annotation))
                     if isinstance(t, type) and issubclass(t, BaseModel))
        out |= {f"{part}.{name}" for name in model.model_fields}
    return out


def command_params(*path: str) -> dict[str, Any]:
    group = typer.main.get_command(app)
    for name in path:
        group = group.commands[name]  # type: ignore[attr-defined]
    return {p.name: p for p in group.params}


def test_every_settings_field_has_exactly_one_option_and_every_option_a_field():
    owners: dict[str, list[str]] = {}
    for name, (_, opt) in {**declared(), "input": (str, INPUT)}.items():
        assert bool(opt.targets) != (name in SWITCHES), name
        for target in opt.targets:
            assert target in settings_fields(), f"{name} sets {target}, which is no settings field"
            if not opt.shorthand:
                owners.setdefault(target, []).append(name)
    for target in settings_fields() - set(NOT_OPTIONS):
        assert len(owners.get(target, [])) == 1, f"{target} is set by {owners.get(target)}"
    assert set(NOT_OPTIONS) <= settings_fields() and not set(NOT_OPTIONS) & set(owners)


def test_every_option_is_a_cai_run_option_and_a_library_keyword_and_the_reverse():
    names = set(declared())
    assert set(command_params("run")) - CLI_ONLY == names
    assert set(command_params("batch", "submit")) - CLI_ONLY == {n for n, (_, o) in declared().items() if o.batch}
    hints = typing.get_type_hints(cai.arun)
    assert hints["options"] == typing.Unpack[RunOptions] and set(RunOptions.__annotations__) == names
    assert typing.get_type_hints(cai.run)["options"] == typing.Unpack[RunOptions]
    assert set(cai.arun.__annotations__) - {"prompts", "progress", "command", "options", "return"} == set()


def test_every_option_is_in_a_panel_of_cai_run_help():
    """A new option lands in the panel of the settings part it sets; one that sets none (or a part without a
    panel) names its panel in its declaration."""
    for name, (_, opt) in declared().items():
        assert opt.help_panel in PANELS, f"{name}: give it panel= (one of {PANELS})"
        assert command_params("run")[name].rich_help_panel == opt.help_panel


def _members(kind: Any) -> set[Any]:
    """The non-None types of a union (Annotated stripped; a sequence of X counts as a tuple of X)."""
    if get_origin(kind) is Annotated:
        return _members(get_args(kind)[0])
    if get_origin(kind) in (Union, types.UnionType):
        return set().union(*(_members(a) for a in get_args(kind)))
    if get_origin(kind) is Sequence:
        return {tuple[get_args(kind)[0], ...]}
    return set() if kind is type(None) else {kind}


@pytest.mark.parametrize("name", [n for n, (_, o) in declared().items() if o.targets and not o.path])
def test_library_type_is_the_settings_fields_type(name):
    kind, opt = declared()[name]
    for target in opt.targets:
        field = option_field(target)
        assert _members(kind) == _members(field.rebuild_annotation()), f"{name} vs {target}"


@pytest.mark.parametrize("name", [n for n, (_, o) in declared().items() if o.targets and o.shown])
def test_cai_run_shows_the_settings_default(name):
    param = command_params("run")[name]
    assert param.default == option_field(declared()[name][1].targets[0]).default


def _values(name: str) -> list[Any]:
    kind, opt = declared()[name]
    base = next(iter(_members(kind)))
    if get_origin(base) is Literal:
        return list(get_args(base))
    if base is bool:
        return [True, False]
    if base in (int, float):
        field = option_field(opt.targets[0]) if opt.targets else None
        low = next((getattr(m, "ge", None) for m in (field.metadata if field else []) if hasattr(m, "ge")), 1)
        return [low, low + 1]
    return ["x"]


@pytest.mark.parametrize("name", sorted(set(declared()) - {"restart"}))
def test_an_option_given_alone_is_refused_only_by_its_own_name(name):
    """Whatever one option's value, an error names that option (or the remedy, --rbr), no other."""
    for value in _values(name):
        try:
            RunSettings.from_options(**{"input": "in.jsonl", "out": "runs/x", name: value})
        except InputError as e:
            subject = str(e).split(":")[0]
            named = {n for n in declared() if re.search(rf"(?<![\w-]){n}(?![\w-])", subject)}
            assert named <= {name, "rbr"}, f"{name}={value!r}: {e}"


def test_revisions_without_rounds_names_what_was_given(tmp_path):
    """The library passed `votes` the caller never gave, and the error named it."""
    with pytest.raises(InputError) as e:
        cai.run(["Hi?"], out=tmp_path / "r", rounds=0, candidates_from="revisions")
    assert str(e.value) == ("candidates_from revisions needs rounds ≥ 1: with rounds 0 the draft has no revisions "
                            "to judge")
    assert not (tmp_path / "r").exists()
    inp = tmp_path / "in.jsonl"
    inp.write_text('{"prompt": "Hi?"}\n')
    res = cai_cli("run", inp, "--out", tmp_path / "r", "--rounds", "0", "--candidates-from", "revisions")
    assert res.exit_code == 2 and res.stderr == f"error: {e.value}\n"


@pytest.mark.parametrize("options, message", [
    ({"rbr_constitution": "rbr-safety"}, "rbr_constitution: rule-based reward options need rbr=True (--rbr)"),
    ({"grader_mode": "joint", "rbr_feedback": False},
     "grader_mode, rbr_feedback: rule-based reward options need rbr=True (--rbr)"),
    ({"rbr": True, "grader_mode": "both"}, "run option grader_mode: Input should be 'separate' or 'joint'"),
    ({"cot": False}, "cot: labeling options need two or more candidates"),
])
def test_errors_use_the_callers_names(tmp_path, options, message):
    with pytest.raises(InputError, match=re.escape(message)):
        cai.run(["Hi?"], out=tmp_path / "r", **options)


def test_the_command_line_passes_on_only_what_it_was_given(tmp_path):
    """`--grader-mode joint` without --rbr was dropped silently; given, it is refused like --grader."""
    inp = tmp_path / "in.jsonl"
    inp.write_text('{"prompt": "Hi?"}\n')
    for cmd in (["run"], ["batch", "submit"]):
        res = cai_cli(*cmd, inp, "--out", tmp_path / "r", "--grader-mode", "joint")
        assert res.exit_code == 2, res.stderr
        assert res.stderr == "error: grader_mode: rule-based reward options need rbr=True (--rbr)\n"
    assert not (tmp_path / "r").exists()
