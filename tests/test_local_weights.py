"""The weights the embedded model loads: the shipped GGUF requantized once into cai's cache folder (checked against
its record, made again when missing or damaged, made once when two processes start at once), `--local-requantize`,
loading on CPUs with AMX, and runs made with other weights."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cai.errors import InputError, OutputError
from cai.providers.local import LocalModel, default_model_path, extra_buffer_types
from cai.providers.local_weights import (
    _sha256,
    cache_files,
    file_sha256,
    local_requantize,
    resume_hint,
    set_local_requantize,
    weights,
)
from helpers import cai, write_prompts

SRC = str(Path(__file__).resolve().parent.parent / "src")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty cache folder of this test's; the process's requantize setting back to its default after."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("CAI_CACHE_DIR", str(folder))
    monkeypatch.delenv("CAI_LOCAL_REQUANTIZE", raising=False)
    yield folder
    set_local_requantize(None)


def _record(path: Path) -> dict:
    return json.loads(path.with_suffix(".json").read_text())


def test_the_shipped_model_is_requantized_once_and_checked_against_its_record(cache):
    shipped = default_model_path()
    first = weights(shipped, "auto", shipped=True)
    assert first.built and first.qtype == "q8_0" and first.path.parent == cache / "gguf"
    record = _record(first.path)
    assert record["sha256"] == file_sha256(first.path) and record["source_sha256"] == file_sha256(shipped)
    assert record["type"] == "q8_0" and record["bytes"] == first.path.stat().st_size
    again = weights(shipped, "auto", shipped=True)
    assert again.path == first.path and not again.built
    assert first.identity() == {"provider": "local", "sha256": record["sha256"],
                                "requantized": {"from": record["source_sha256"], "type": "q8_0"}}
    assert not [p for p in first.path.parent.iterdir() if p.name.endswith(".tmp")]
    # The shipped file itself is never touched; `off` loads it as it is, with the identity it always had.
    off = weights(shipped, "off", shipped=True)
    assert off.path == shipped and off.identity() == {"provider": "local", "sha256": file_sha256(shipped)}


@pytest.mark.parametrize("damage", ["flipped byte", "truncated", "missing", "record missing", "record garbled"])
def test_a_damaged_or_missing_file_is_made_again(cache, damage):
    shipped = default_model_path()
    path = weights(shipped, "q8_0", shipped=True).path
    want = _record(path)["sha256"]
    if damage == "flipped byte":
        with open(path, "r+b") as f:
            f.seek(path.stat().st_size // 2)
            byte = f.read(1)
            f.seek(-1, os.SEEK_CUR)
            f.write(bytes([byte[0] ^ 0xFF]))
    elif damage == "truncated":
        os.truncate(path, path.stat().st_size // 3)
    elif damage == "missing":
        path.unlink()
    elif damage == "record missing":
        path.with_suffix(".json").unlink()
    else:
        path.with_suffix(".json").write_text("{not json")
    again = weights(shipped, "q8_0", shipped=True)
    assert again.built and again.path == path
    assert file_sha256(path) == _record(path)["sha256"] == want  # requantization is deterministic


_FIRST_USE = """
import json, sys
from pathlib import Path
from cai.providers.local_weights import weights
print("started", flush=True)
w = weights(Path(sys.argv[1]), "q8_0", shipped=True)
print(json.dumps({"built": w.built, "path": str(w.path)}), flush=True)
"""


def test_two_processes_starting_at_once_make_the_file_once(cache):
    """Both processes are held at the cache's lock until both have started, then race for it: one makes the file,
    the other finds it made and checked."""
    shipped = default_model_path()
    lock = cache_files(shipped, "q8_0")[2]
    lock.parent.mkdir(parents=True)
    env = {**os.environ, "PYTHONPATH": SRC}
    with open(lock, "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        procs = [subprocess.Popen([sys.executable, "-c", _FIRST_USE, str(shipped)], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]
        for p in procs:
            assert p.stdout is not None and p.stdout.readline().strip() == "started"
        fcntl.flock(held, fcntl.LOCK_UN)
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err
        outs.append(json.loads(out))
    assert sorted(o["built"] for o in outs) == [False, True]
    path = Path(outs[0]["path"])
    assert outs[1]["path"] == str(path) and file_sha256(path) == _record(path)["sha256"]
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


def test_a_file_of_your_own_loads_as_it_is_unless_asked(cache, tmp_path):
    own = tmp_path / "mine.gguf"
    own.write_bytes(default_model_path().read_bytes())
    model = LocalModel(str(own))
    assert model.path == own.resolve() and model.identity() == {"provider": "local", "sha256": file_sha256(own)}
    set_local_requantize("q4_0")
    model = LocalModel(str(own))
    assert model.path.parent == cache / "gguf" and model.identity()["requantized"] == {
        "from": file_sha256(own), "type": "q4_0"}


def test_the_manifest_and_the_report_name_a_local_model_by_file_and_sha256(cache, tmp_path):
    """`model_files` in manifest.json and the report's model column; the file is hashed once in the process (the
    resume fingerprint's hash is the manifest's)."""
    from cai.report import write_report

    own = tmp_path / "mine.gguf"
    own.write_bytes(default_model_path().read_bytes())
    inp = write_prompts(tmp_path / "in.jsonl", ["Say hi."])
    hashed = _sha256.cache_info().misses
    res = cai("run", inp, "--out", tmp_path / "run", "--model", f"local:{own}", "--rounds", "0", "--max-tokens", "4",
              "--quiet")
    assert res.exit_code == 0, res.stderr
    assert _sha256.cache_info().misses == hashed + 1
    sha = file_sha256(own)
    files = json.loads((tmp_path / "run" / "manifest.json").read_text())["model_files"]
    assert files == {role: {"file": "mine.gguf", "sha256": sha} for role in ("critic", "generator", "reviser")}
    page = write_report(tmp_path / "run").read_text()
    assert f"<td>local:{own.resolve()} (sha256 {sha[:12]}…)</td>" in page


def test_the_setting_and_its_environment_variable(cache, monkeypatch):
    assert local_requantize() == "auto"
    monkeypatch.setenv("CAI_LOCAL_REQUANTIZE", "Q4_0")
    assert local_requantize() == "q4_0"
    set_local_requantize("off")
    assert local_requantize() == "off"
    set_local_requantize(None)
    monkeypatch.setenv("CAI_LOCAL_REQUANTIZE", "q5")
    with pytest.raises(InputError, match="CAI_LOCAL_REQUANTIZE must be one of auto, q8_0, q4_0, off"):
        local_requantize()
    with pytest.raises(InputError):
        set_local_requantize("q5")


def test_a_file_llama_cpp_cannot_requantize_is_one_line_naming_it(cache, tmp_path):
    junk = tmp_path / "junk.gguf"
    junk.write_text("not a model")
    with pytest.raises(InputError, match=r"junk\.gguf: llama\.cpp could not requantize this file to q8_0 .*"
                                         r"--local-requantize off"):
        weights(junk, "q8_0", shipped=False)
    assert not [p for p in (cache / "gguf").iterdir() if p.suffix in (".gguf", ".json", ".tmp")]


def test_an_unwritable_cache_folder_is_one_line(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("CAI_CACHE_DIR", str(blocker / "cai"))
    with pytest.raises(OutputError, match="cannot create the model cache folder .*set CAI_CACHE_DIR"):
        weights(default_model_path(), "auto", shipped=True)


def test_cli_and_library_take_local_requantize(cache, tmp_path, stub_server, monkeypatch):
    """`cai run --local-requantize` and `cai.arun(local_requantize=...)` both take it, store it in the run's
    settings and set it for the process; a value outside the four is a one-line usage error."""
    import asyncio

    from cai.api import arun

    inp = write_prompts(tmp_path / "in.jsonl", ["Say hi."])
    common = ["--model", "openai:stub", "--base-url", stub_server.url, "--rounds", "0", "--quiet"]
    res = cai("run", inp, "--out", tmp_path / "cli", *common, "--local-requantize", "q4_0",
              env={"OPENAI_API_KEY": "x"})
    assert res.exit_code == 0, res.stderr
    assert json.loads((tmp_path / "cli" / "manifest.json").read_text())["settings"]["models"][
        "local_requantize"] == "q4_0"
    assert local_requantize() == "q4_0"
    set_local_requantize(None)
    monkeypatch.setenv("OPENAI_API_KEY", "x")
    run = asyncio.run(arun(["Say hi."], out=tmp_path / "lib", model="openai:stub", base_url=stub_server.url,
                           rounds=0, local_requantize="off"))
    assert run.manifest["settings"]["models"]["local_requantize"] == "off" and local_requantize() == "off"
    bad = cai("run", inp, "--out", tmp_path / "bad", *common, "--local-requantize", "q5")
    assert bad.exit_code == 2 and len(bad.stderr.strip().splitlines()) == 1 and "--local-requantize" in bad.stderr


_DECODE = """
import sys
from cai.providers.local import extra_buffer_types, new_llama
llm = new_llama(sys.argv[1], n_ctx=512, n_threads=2)
assert llm.model_params.use_extra_bufts == extra_buffer_types()
llm.eval([int(t) for t in llm.tokenize(b"A few words, decoded together in one batch. " * 8)])
print("decoded", flush=True)
"""


@pytest.mark.slow
@pytest.mark.parametrize("which", ["shipped", "requantized"])
def test_every_model_decodes_a_batch_where_amx_is_present(cache, which):
    """llama.cpp's AMX matrix kernels crash the process (SIGSEGV) on the CPUs measured, for Q4_1, Q8_0 and Q4_0
    alike: cai loads without the extra buffer types there (in a child process, so a crash fails only this test)."""
    path = default_model_path() if which == "shipped" else weights(default_model_path(), "q8_0", shipped=True).path
    proc = subprocess.run([sys.executable, "-c", _DECODE, str(path)], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": SRC})
    assert proc.returncode == 0 and proc.stdout.strip() == "decoded", (proc.returncode, proc.stderr[-2000:])
    print(f"extra buffer types: {extra_buffer_types()}")


def test_resume_hint_names_the_option_that_loads_the_run_s_weights():
    q41 = {"provider": "local", "sha256": "a" * 64}
    q8 = {"provider": "local", "sha256": "b" * 64, "requantized": {"from": "a" * 64, "type": "q8_0"}}
    other_q8 = {**q8, "sha256": "c" * 64}
    assert "--local-requantize off" in resume_hint({"critic": q41}, {"critic": q8})
    assert "--local-requantize q8_0" in resume_hint({"critic": q8}, {"critic": q41})
    assert "another llama-cpp-python version" in resume_hint({"critic": q8}, {"critic": other_q8})
    assert resume_hint({"critic": q41}, {"critic": {"provider": "local", "sha256": "d" * 64}}) is None
    assert resume_hint({"critic": q41}, {"critic": {"provider": "openai", "model": "x"}}) is None


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cai", *args], capture_output=True, text=True, timeout=1200,
                          env={**os.environ, "PYTHONPATH": SRC, **env})


@pytest.mark.slow
def test_a_run_made_with_the_shipped_q4_1_weights_resumes_only_with_them(cache, tmp_path):
    """A run made before requantization (the shipped Q4_1 loaded as it is, as `CAI_LOCAL_REQUANTIZE=off` loads it)
    is refused in one line naming `--local-requantize off` under the new default, nothing sent or stored; with that
    option it resumes with zero calls and identical exports."""
    inp = write_prompts(tmp_path / "in.jsonl", ["How do I bake a simple loaf of bread?"])
    run = tmp_path / "old"
    args = ["run", str(inp), "--out", str(run), "--rounds", "1", "--max-tokens", "16", "--quiet", "--json"]
    made = _cli(*args, env={"CAI_LOCAL_REQUANTIZE": "off"})
    assert made.returncode == 0, made.stderr[-2000:]
    fp = json.loads(made.stdout)
    assert fp["this_invocation"]["calls"] > 0
    exports = {p.name: p.read_bytes() for p in run.glob("*.jsonl")}
    store = (run / "run.sqlite").read_bytes()

    refused = _cli(*args, env={})
    assert refused.returncode == 2 and refused.stdout == ""
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and "--local-requantize off" in lines[0] and "--restart" in lines[0], lines
    assert str(run) in lines[0] and (run / "run.sqlite").read_bytes() == store

    resumed = _cli(*args, "--local-requantize", "off", env={})
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert json.loads(resumed.stdout)["this_invocation"]["calls"] == 0
    assert {p.name: p.read_bytes() for p in run.glob("*.jsonl")} == exports
