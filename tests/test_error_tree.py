"""The error tree is organised by meaning (issue 35): bad input, configuration, storage, lock, provider and
interruption are siblings, so `except InputError` never catches a full disk or a damaged store. Every class's
base and exit code match the table in docs/api.md."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

import cai
from cai import errors
from cai.errors import CaiError, ConfigError, ConfigMismatch, DamagedStore, InputError, OutputError, StorageError

DOC = Path(__file__).resolve().parents[1] / "docs" / "api.md"
ROW = re.compile(r"^\| `(\w+)` \| `(\w+)` \| (\d+) \|", re.M)


def documented() -> dict[str, tuple[str, int]]:
    """{class: (base, exit code)} from the table in docs/api.md's Errors section."""
    section = DOC.read_text(encoding="utf-8").split("## Errors (`cai.errors`)", 1)[1].split("\n## ", 1)[0]
    return {name: (base, int(code)) for name, base, code in ROW.findall(section)}


def public_errors() -> dict[str, type[CaiError]]:
    """Every public CaiError class `cai.errors` defines."""
    return {name: cls for name, cls in vars(errors).items()
            if inspect.isclass(cls) and issubclass(cls, CaiError) and not name.startswith("_")}


def public_base(cls: type) -> str:
    """The nearest public ancestor's name (a private helper base such as `_Located` is skipped)."""
    return next(c.__name__ for c in cls.__mro__[1:] if not c.__name__.startswith("_"))


def test_every_error_is_documented_with_its_base_and_exit_code() -> None:
    table = documented()
    found = public_errors()
    assert set(table) == set(found)
    for name, cls in found.items():
        assert type(cls.exit_code) is int, name
        assert (public_base(cls), cls.exit_code) == table[name], name


@pytest.mark.parametrize("cls", [OutputError, DamagedStore, ConfigMismatch])
def test_storage_and_configuration_errors_are_not_input_errors(cls: type[CaiError]) -> None:
    assert not issubclass(cls, InputError)
    assert cls.exit_code == 2


def test_path_and_line_start_the_message_as_before() -> None:
    for cls in (InputError, ConfigMismatch, OutputError, DamagedStore):
        e = cls("bad", path="in.jsonl", line=3)
        assert (str(e), e.path, e.line) == ("in.jsonl:3: bad", "in.jsonl", 3)
        assert str(cls("bad", path="out")) == "out: bad"
        assert str(cls("bad")) == "bad"


def test_a_damaged_store_is_a_storage_error_not_bad_input(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.sqlite").write_bytes(b"this is not a database" * 100)
    with pytest.raises(CaiError) as e:
        cai.open_run(run)
    assert isinstance(e.value, StorageError) and not isinstance(e.value, (InputError, ConfigError))
    assert e.value.exit_code == 2
    assert str(e.value).startswith(str(run / "run.sqlite"))
