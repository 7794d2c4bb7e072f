"""The resume fingerprint is derived from the settings marked OUTPUT (and GenConfig's output fields)."""

from __future__ import annotations

from typing import Annotated

import pytest

from cai.config import OUTPUT, GenConfig, output_settings
from cai.errors import ConfigMismatch
from cai.pipeline import RunSettings
from cai.runs import check_fingerprint, fingerprint
from cai.store import Store
from helpers import cai, write_prompts
from reliability import KEY, stub_args


class WithTopK(RunSettings):
    """A setting added later, marked OUTPUT and nothing else."""

    top_k: Annotated[int, OUTPUT] = 40


class GenWithTopP(GenConfig):
    top_p: float = 1.0


def fp(settings: RunSettings) -> dict:
    return fingerprint(settings, {"generator": {"provider": "openai"}}, "c" * 64, "i" * 64)


def test_a_new_output_field_refuses_a_changed_resume_without_other_changes(tmp_path):
    store = Store(tmp_path)
    try:
        check_fingerprint(store, fp(WithTopK(input="x", out="y", top_k=40)), WithTopK(input="x", out="y"))
        check_fingerprint(store, fp(WithTopK(input="x", out="y", top_k=40)), WithTopK(input="x", out="y"))
        with pytest.raises(ConfigMismatch, match="different top_k"):
            changed = WithTopK(input="x", out="y", top_k=50)
            check_fingerprint(store, fp(changed), changed)
    finally:
        store.close()


def test_a_new_generation_field_is_in_the_fingerprint_by_itself():
    a = RunSettings(input="x", out="y", gen=GenWithTopP(top_p=1.0))
    b = RunSettings(input="x", out="y", gen=GenWithTopP(top_p=0.9))
    assert output_settings(a)["top_p"] == 1.0 and fp(a) != fp(b)


def test_a_field_added_later_at_its_default_still_resumes_an_older_run(tmp_path):
    store = Store(tmp_path)
    try:
        older = {k: v for k, v in fp(RunSettings(input="x", out="y")).items() if k != "top_logprobs"}
        store.set_meta("fingerprint", older)  # as a version without top_logprobs in the fingerprint wrote it
        settings = RunSettings(input="x", out="y")
        check_fingerprint(store, fp(settings), settings)
        changed = RunSettings(input="x", out="y", gen=GenConfig(top_logprobs=5))
        with pytest.raises(ConfigMismatch, match="different top_logprobs"):
            check_fingerprint(store, fp(changed), changed)
    finally:
        store.close()


@pytest.mark.parametrize("change, refused", [
    (["--max-tokens", "17"], True), (["--rounds", "1"], True), (["--temperature", "0.2"], True),
    (["--stop-when-clean"], True), (["--concurrency", "3"], False), (["--max-retries", "4"], False),
    (["--timeout", "9"], False)])
def test_only_output_settings_refuse_to_resume(tmp_path, stub_server, change, refused):
    inp = write_prompts(tmp_path / "in.jsonl", ["hi?"])
    assert cai("run", inp, "--out", tmp_path / "r", *stub_args(stub_server), env={"OPENAI_API_KEY": KEY}).exit_code == 0
    res = cai("run", inp, "--out", tmp_path / "r", *stub_args(stub_server), *change, env={"OPENAI_API_KEY": KEY})
    assert res.exit_code == (2 if refused else 0), res.stderr
    if refused:
        assert "this run was started with a different" in res.stderr
