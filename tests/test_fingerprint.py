"""The resume fingerprint is derived from the settings marked OUTPUT (and GenConfig's output fields)."""

from __future__ import annotations

from typing import Annotated

import pytest

from cai.calls import OUTPUT, GenConfig, output_settings
from cai.errors import ConfigMismatch, InputError
from cai.runs import check_fingerprint, fingerprint
from cai.settings import IOSettings, LoopSettings, RunSettings
from cai.store import Store
from helpers import cai, write_prompts
from reliability import KEY, stub_args


class LoopWithTopK(LoopSettings):
    """A loop setting added later, marked OUTPUT and nothing else."""

    top_k: Annotated[int, OUTPUT] = 40


class WithLoopTopK(RunSettings):
    loop: LoopWithTopK = LoopWithTopK()


class WithTopK(RunSettings):
    """A top-level setting added later, marked OUTPUT and nothing else."""

    top_k: Annotated[int, OUTPUT] = 40


class GenWithTopP(GenConfig):
    top_p: float = 1.0


IO = IOSettings(input="x", out="y")


def fp(settings: RunSettings) -> dict:
    return fingerprint(settings, {"generator": {"provider": "openai"}}, "c" * 64, "i" * 64)


@pytest.mark.parametrize("make", [lambda k: WithTopK(io=IO, top_k=k),
                                  lambda k: WithLoopTopK(io=IO, loop=LoopWithTopK(top_k=k))],
                         ids=["top-level", "nested"])
def test_a_new_output_field_refuses_a_changed_resume_without_other_changes(tmp_path, make):
    store = Store(tmp_path)
    try:
        check_fingerprint(store, fp(make(40)), make(40))
        check_fingerprint(store, fp(make(40)), make(40))
        with pytest.raises(ConfigMismatch, match=r"was made with top_k=40; now 50 \("):
            check_fingerprint(store, fp(make(50)), make(50))
    finally:
        store.close()


def test_a_new_generation_field_is_in_the_fingerprint_by_itself():
    a = RunSettings(io=IO, generation=GenWithTopP(top_p=1.0))
    b = RunSettings(io=IO, generation=GenWithTopP(top_p=0.9))
    assert output_settings(a)["top_p"] == 1.0 and fp(a) != fp(b)


def test_the_fingerprint_stays_flat_so_older_runs_resume():
    fields = output_settings(RunSettings(io=IO))
    assert set(fields) == {"rounds", "stop_when_clean", "fewshot", "candidates", "candidates_from", "max_tokens",
                           "temperature", "seed", "top_logprobs"}


def test_two_output_fields_of_one_name_are_refused():
    class Clash(RunSettings):
        rounds: Annotated[int, OUTPUT] = 3

    with pytest.raises(TypeError, match="share a name: rounds"):
        output_settings(Clash(io=IO))


def test_a_field_added_later_at_its_default_still_resumes_an_older_run(tmp_path):
    store = Store(tmp_path)
    try:
        older = {k: v for k, v in fp(RunSettings(io=IO)).items() if k != "top_logprobs"}
        store.set_meta("fingerprint", older)  # as a version without top_logprobs in the fingerprint wrote it
        settings = RunSettings(io=IO)
        check_fingerprint(store, fp(settings), settings)
        changed = RunSettings(io=IO, generation=GenConfig(top_logprobs=5))
        with pytest.raises(ConfigMismatch, match="was made with top_logprobs="):
            check_fingerprint(store, fp(changed), changed)
        nested = WithLoopTopK(io=IO)  # a nested field added later, at its default, resumes too
        check_fingerprint(store, fp(nested), nested)
    finally:
        store.close()


def test_a_mismatch_names_the_changed_field_and_both_values_on_one_line(tmp_path):
    settings = RunSettings(io=IO)
    models = {"generator": {"provider": "openai", "model": "g", "base_url": None},
              "critic": {"provider": "openai", "model": "a", "base_url": None}}
    store = Store(tmp_path)
    try:
        check_fingerprint(store, fingerprint(settings, models, "c" * 64, "i" * 64), settings)
        other = {**models, "critic": {**models["critic"], "model": "b"}}
        with pytest.raises(ConfigMismatch) as nested:
            check_fingerprint(store, fingerprint(settings, other, "c" * 64, "i" * 64), settings)
        changed = RunSettings(io=IO, generation=GenConfig(max_tokens=17))
        with pytest.raises(ConfigMismatch) as plain:
            check_fingerprint(store, fingerprint(changed, models, "c" * 64, "i" * 64), changed)
    finally:
        store.close()
    max_tokens = settings.generation.max_tokens
    for err, said in ((nested, "this run was made with models.critic=openai:a; now openai:b ("),
                      (plain, f"this run was made with max_tokens={max_tokens}; now 17 (")):
        text = str(err.value)
        assert text.startswith(f"{tmp_path}: {said}") and "--restart" in text and "\n" not in text, text
        assert "{" not in text and "a different" not in text


def test_settings_are_built_once_from_flat_options():
    s = RunSettings.from_options(input="in.jsonl", out="runs/x", model="openai:m", critic="anthropic:c",
                                 rounds=1, max_tokens=64, concurrency=3, format="parquet", rbr=True, votes=5,
                                 rbr_constitution="rbr-safety", min_reward_margin=0.1)
    assert s.models.specs() == {"generator": "openai:m", "critic": "anthropic:c", "reviser": "openai:m"}
    assert (s.loop.rounds, s.generation.max_tokens, s.execution.concurrency) == (1, 64, 3)
    assert s.scoring is not None and (s.scoring.votes, s.scoring.constitution) == (5, "rbr-safety")
    assert (s.export.format, s.export.min_reward_margin, s.loop.constitution) == ("parquet", 0.1, "default")
    assert RunSettings.from_stored(s.model_dump()) == s


@pytest.mark.parametrize("options, message", [
    ({"rounds": -1}, "rounds"), ({"colour": "red"}, "unknown run option 'colour'"),
    ({"votes": 5}, "need rbr=True")])
def test_bad_options_are_one_input_error(options, message):
    with pytest.raises(InputError, match=message):
        RunSettings.from_options(input="x", out="y", **options)


def test_settings_stored_flat_by_older_versions_still_read():
    flat = {"input": "x", "out": "y", "generator": "local", "critic": "local", "reviser": "local",
            "base_url": None, "constitution": "default", "rounds": 1, "stop_when_clean": False,
            "gen": {"max_tokens": 64, "temperature": 0.7, "seed": 0, "top_logprobs": None, "timeout": 120.0},
            "concurrency": 8, "limit": None, "max_retries": 5, "rpm": None, "tpm": None, "retry_failed": False,
            "format": "jsonl", "system_role_for_developer": True, "prices": None, "rbr": False, "grader": None,
            "rbr_constitution": None, "grader_mode": "separate", "votes": 3, "weights": None,
            "rbr_feedback": True, "min_reward_margin": None}
    s = RunSettings.from_stored(flat)
    assert (s.loop.rounds, s.generation.max_tokens, s.export.system_role_for_developer) == (1, 64, True)
    assert s.scoring is None


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
        assert "this run was made with " in res.stderr and "; now " in res.stderr
