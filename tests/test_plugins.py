"""The plugin registry (`cai.plugins`): the built-ins come from the `cai.plugins` entry points exactly as a third-party
package's do, nothing loads before it is asked for, and an unknown name is one line naming the known ones."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from cai import plugins
from cai.errors import InputError
from cai.providers import Model, get_model
from helpers import install_plugin

BUILT_IN = {"provider": ["anthropic", "local", "openai", "transformers"], "scorer": ["rbr"], "labeler": ["ai"],
            "runner": ["ray"], "manifest": ["refusal"], "exporter": ["hf"], "command": []}


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A folder on sys.path for plugins made by a test; the registry is read again before and after."""
    folder = tmp_path / "site"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))
    plugins.refresh()
    yield folder
    plugins.refresh()


def test_the_built_ins_are_entry_points_of_their_kind() -> None:
    assert {kind: plugins.names(kind) for kind in plugins.KINDS} == BUILT_IN
    for name in BUILT_IN["provider"]:
        cls = plugins.load("provider", name)
        assert issubclass(cls, Model) and cls.provider == name
    for kind in ("scorer", "labeler", "runner", "manifest", "exporter"):
        assert all(callable(obj) for obj in plugins.load_all(kind))


def test_nothing_is_imported_before_it_is_asked_for() -> None:
    code = ("import sys, cai; from cai import plugins; plugins.names('provider'); import cai.providers; "
            "print(sorted(m for m in sys.modules if m.startswith(('cai.rbr', 'cai.labels', 'cai.cluster', "
            "'cai.providers.openai', 'cai.providers.anthropic', 'cai.providers.local', 'llama_cpp', 'openai', "
            "'anthropic', 'ray', 'cai.providers.transformers', 'torch', 'transformers'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_an_unknown_name_is_one_line_naming_the_known_ones() -> None:
    with pytest.raises(InputError, match=r"^no scorer named 'nope' is installed \(known: rbr; .*'scorer\.NAME'"):
        plugins.load("scorer", "nope")
    with pytest.raises(InputError, match=r"unknown model provider 'nope' in 'nope:x' \(known: anthropic, local, "
                                         r"openai, transformers\)"):
        get_model("nope:x")


def test_a_third_party_provider_registers_like_the_built_ins(site: Path) -> None:
    install_plugin(site, "cai_shout", {"provider.shout": "cai_shout:ShoutModel"}, {"cai_shout": (
        "from cai.calls import Completion\n"
        "from cai.providers import Model\n\n"
        "class ShoutModel(Model):\n"
        "    provider = 'shout'\n\n"
        "    async def complete(self, request):\n"
        "        text = request.messages[-1]['content'].upper()\n"
        "        return Completion(text=text, tokens_in=1, tokens_out=1)\n")})
    assert plugins.names("provider") == ["anthropic", "local", "openai", "shout", "transformers"]
    model = get_model("shout:loud")
    assert model.spec == "shout:loud" and type(model).__module__ == "cai_shout"


def test_a_command_plugin_that_breaks_or_clashes_is_skipped_with_a_line(site: Path) -> None:
    install_plugin(site, "cai_cmds", {"command.status": "cai_cmds:status", "command.broken": "cai_cmds_gone:x",
                                      "command.hello": "cai_cmds:hello"}, {"cai_cmds": (
        "def status() -> None:\n    print('not cai status')\n\n\n"
        "def hello(name: str) -> None:\n    print(f'hello {name}')\n")})
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    cai = [sys.executable, "-m", "cai"]
    out = subprocess.run([*cai, "hello", "you"], capture_output=True, text=True, env=env)
    assert (out.returncode, out.stdout) == (0, "hello you\n")
    assert "skipped the command plugin 'status': cai has a command of that name" in out.stderr
    assert "skipped the command plugin 'broken': ModuleNotFoundError" in out.stderr
    status = subprocess.run([*cai, "status", str(site / "nowhere")], capture_output=True, text=True, env=env)
    assert status.returncode == 2 and "not cai status" not in status.stdout
