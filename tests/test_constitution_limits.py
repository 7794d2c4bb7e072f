"""Hostile or absurd constitution files (YAML "billion laughs", deep nesting, huge integers, huge files) are
refused with one line naming the file, the line and the limit (exit 2), in bounded memory."""

from __future__ import annotations

import resource
import subprocess
from pathlib import Path

import pytest

from cai.constitution import load
from cai.errors import InputError
from cai.limits import CONSTITUTION_BYTES, MAX_ALIAS_NODES, MAX_DEPTH
from helpers import cai
from reliability import cai_proc, env, one_line_error

MEMORY = 1 << 30  # address space of the child: far more than loading a real constitution takes
PRINCIPLE = "name: hostile\nprinciples:\n  - id: a\n    critique: c\n    revision: r\n    metadata:\n"


def laughs(path: Path, levels: int = 12) -> Path:
    """A "billion laughs" under a principle's metadata: each level lists the previous one 9 times."""
    lines = ['      l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"      l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, levels)]
    path.write_text(PRINCIPLE + "\n".join(lines) + "\n", encoding="utf-8")
    return path


def limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY, MEMORY))


def cai_in_bounded_memory(*args: object) -> subprocess.CompletedProcess[str]:
    """`python -m cai ARGS` in at most MEMORY bytes. Out of memory, pydantic-core panics; with a Rust backtrace
    asked for, that panic can deadlock, so none is (the child then ends with a traceback). The timeout only
    turns a hang into a failure."""
    proc = cai_proc(*args, env={**env(), "RUST_BACKTRACE": "0"}, preexec_fn=limit_memory)
    try:
        out, err = proc.communicate(timeout=600)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail(f"cai {args[0]} hung")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.mark.parametrize("command", ["validate", "show", "run"])
def test_billion_laughs_is_refused_in_bounded_memory(tmp_path, command):
    p = laughs(tmp_path / "laughs.yaml")
    # 9 + 81 + 729 + 6,561 + 59,049 nodes are within the bound; the 9 aliases on line 12 are not
    assert 59_049 < MAX_ALIAS_NODES < 531_441
    args = {"validate": ["constitution", "validate", p], "show": ["constitution", "show", "--json", p],
            "run": ["run", tmp_path / "in.jsonl", "--out", tmp_path / "run", "--constitution", p]}[command]
    (tmp_path / "in.jsonl").write_text('{"prompt": "hi"}\n')
    r = cai_in_bounded_memory(*args)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    line = f"{p}:12: aliases stand for more than {MAX_ALIAS_NODES:,} nodes in all"
    assert line in (r.stderr.splitlines()[0] if command == "validate" else one_line_error(r.stderr))
    assert not (tmp_path / "run").exists()


def test_aliases_within_the_bound_still_load(tmp_path):
    p = laughs(tmp_path / "small.yaml", levels=3)
    meta = load(str(p)).principles[0].metadata
    assert meta["l2"] == [[["lol"] * 9] * 9] * 9


@pytest.mark.parametrize(("yaml_text", "line", "message"), [
    ("      deep: " + "[" * 20_000 + "]" * 20_000 + "\n", 7, f"nested more than {MAX_DEPTH} levels deep"),
    ("      ok: 1\n      big: " + "7" * 5_000 + "\n", 8, "an integer of more than 4300 digits"),
    ("      loop: &loop [1, *loop]\n", 7, "a recursive alias (it stands for a node that holds it)"),
    ("      a: &a " + "[" * 60 + "]" * 60 + "\n      b: " + "[" * 45 + "*a" + "]" * 45 + "\n", 8,
     f"this alias nests more than {MAX_DEPTH} levels deep"),
], ids=["deep", "long-integer", "recursive-alias", "deep-through-an-alias"])
def test_nesting_long_integers_and_recursive_aliases_name_their_line(tmp_path, yaml_text, line, message):
    p = tmp_path / "c.yaml"
    p.write_text(PRINCIPLE + yaml_text, encoding="utf-8")
    with pytest.raises(InputError) as e:
        load(str(p))
    assert str(e.value) == f"{p}:{line}: {message}"
    r = cai("constitution", "show", p)
    assert r.exit_code == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip() == f"error: {p}:{line}: {message}"


def test_a_file_over_the_size_limit_is_refused_before_it_is_read(tmp_path):
    p = tmp_path / "huge.yaml"
    with p.open("wb") as fh:
        fh.write(b"name: huge\n")
        fh.truncate(CONSTITUTION_BYTES + 1)  # sparse: nothing written to disk
    message = f"{p}: {CONSTITUTION_BYTES + 1:,} bytes, over the 2 MiB limit for a constitution file"
    r = cai("constitution", "validate", p)
    assert r.exit_code == 2 and "Traceback" not in r.stderr and r.stderr.splitlines()[0] == message
    r = cai("constitution", "show", "--json", p)
    assert r.exit_code == 2 and r.stderr.strip() == f"error: {message}"


def test_a_bad_byte_names_its_line(tmp_path):
    p = tmp_path / "latin1.yaml"
    p.write_bytes(PRINCIPLE.encode() + b"      caf\xe9: 1\n")
    with pytest.raises(InputError) as e:
        load(str(p))
    assert str(e.value).startswith(f"{p}:7: not UTF-8")
