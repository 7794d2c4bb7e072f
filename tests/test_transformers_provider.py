"""`transformers:PATH` against a tiny Llama checkpoint built here (2 layers, hidden 64, random weights from a fixed
seed, a byte-level BPE tokenizer with a ChatML template): seeded requests, max_tokens and finish_reason, the
logprobs the grader and the judge read, `cai run` end to end, and the one-line errors of a bad folder or a missing
extra."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch", reason="the transformers provider needs the 'train' extra (torch)")
transformers = pytest.importorskip("transformers", reason="the transformers provider needs the 'train' extra")

from cai.calls import Completion, GenConfig, Request  # noqa: E402
from cai.core.choice import LOGPROB_CONFIG  # noqa: E402
from cai.providers import get_model  # noqa: E402
from cai.providers.base import provider_class  # noqa: E402
from helpers import cai, read_jsonl, write_prompts  # noqa: E402
from reliability import one_line_error  # noqa: E402

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
NO_SYSTEM = ("{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
             "{% endif %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
             "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CORPUS = ['Yes, no. The answer is A or B. A reply in JSON: {"critique": "fine", "violates": false, "severity": 0}.']
HELLO = ({"role": "user", "content": "Hello there, how are you?"},)


def build_checkpoint(dest: Path) -> Path:
    """A tiny Llama checkpoint with a byte-level BPE tokenizer (about 320 tokens, <|im_end|> ends a reply)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(CORPUS, trainers.BpeTrainer(
        vocab_size=320, special_tokens=SPECIAL, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<|endoftext|>", eos_token="<|im_end|>",
                                  pad_token="<|endoftext|>")
    tok.chat_template = CHATML
    tok.save_pretrained(dest)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=8192,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = LlamaForCausalLM(cfg)
    model.save_pretrained(dest)
    return dest


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The tiny checkpoint; torch on one thread meanwhile (a model this small only loses time to more)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield build_checkpoint(tmp_path_factory.mktemp("tiny") / "ckpt")
    finally:
        torch.set_num_threads(threads)


def complete(spec: str, messages: tuple[dict[str, str], ...] = HELLO, schema: dict[str, Any] | None = None,
             **config: Any) -> Completion:
    request = Request(messages=messages, config=GenConfig(**config), schema=schema)
    return asyncio.run(get_model(spec).complete(request))


def test_same_seed_same_text_other_seed_other_text(checkpoint: Path) -> None:
    spec = f"transformers:{checkpoint}"
    a = complete(spec, max_tokens=24, temperature=0.8, seed=1)
    assert a == complete(spec, max_tokens=24, temperature=0.8, seed=1)  # a new Model on the same loaded weights
    assert a.text and a.tokens_out == 24 and a.finish_reason == "length"
    assert complete(spec, max_tokens=24, temperature=0.8, seed=2).text != a.text
    greedy = {complete(spec, max_tokens=12, temperature=0.0, seed=s).text for s in (0, 1, 2)}
    assert len(greedy) == 1  # temperature 0: the seed changes nothing


def test_max_tokens_and_finish_reason(checkpoint: Path) -> None:
    """A reply cut at max_tokens says `length` and has max_tokens tokens; one that ended says `stop`, shorter."""
    replies = [complete(f"transformers:{checkpoint}", max_tokens=48, temperature=1.0, seed=s) for s in range(40)]
    reasons = {r.finish_reason for r in replies}
    assert reasons == {"length", "stop"}
    for r in replies:
        assert (r.tokens_out == 48) if r.finish_reason == "length" else (r.tokens_out < 48)
        assert r.tokens_in > 0 and r.top_logprobs is None and r.structured is None


def test_logprobs_are_the_models_own_top_tokens(checkpoint: Path) -> None:
    """The grader's and the judge's call shape: one position of 10 (token text, logprob), the model's own
    distribution at the prompt's end, computed here with transformers directly."""
    c = complete(f"transformers:{checkpoint}", **LOGPROB_CONFIG.model_dump())
    assert c.top_logprobs is not None and len(c.top_logprobs) == 1 and len(c.top_logprobs[0]) == 10
    tok = transformers.AutoTokenizer.from_pretrained(checkpoint)
    model = transformers.AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32)
    text = tok.apply_chat_template(list(HELLO), add_generation_prompt=True, tokenize=False)
    ids = tok(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    assert c.tokens_in == ids.shape[1]
    with torch.inference_mode():
        lp = torch.log_softmax(model(input_ids=ids).logits[0, -1].float(), dim=-1)
    values, index = torch.topk(lp, 10)
    want = [(tok.decode([i]), v) for i, v in zip(index.tolist(), values.tolist())]
    assert [t for t, _ in c.top_logprobs[0]] == [t for t, _ in want]
    assert [v for _, v in c.top_logprobs[0]] == pytest.approx([v for _, v in want], abs=1e-4)
    assert c.text == (want[0][0] if int(index[0]) != tok.eos_token_id else "")  # greedy: the top token


def test_a_greedy_reply_is_rebuilt_from_its_top_tokens(checkpoint: Path) -> None:
    """`p_first_at_answer` rebuilds a chain-of-thought reply from each position's most likely token: at
    temperature 0 those pieces, joined, are the reply (special tokens aside, which the text leaves out)."""
    c = complete(f"transformers:{checkpoint}", max_tokens=30, temperature=0.0, top_logprobs=5)
    assert c.top_logprobs is not None and len(c.top_logprobs) == max(1, c.tokens_out)
    assert all(len(pos) == 5 and all(isinstance(t, str) and lp <= 0.0 for t, lp in pos) for pos in c.top_logprobs)
    assert all([lp for _, lp in pos] == sorted((lp for _, lp in pos), reverse=True) for pos in c.top_logprobs)
    rebuilt = "".join(max(pos, key=lambda e: e[1])[0] for pos in c.top_logprobs[:c.tokens_out])
    for s in SPECIAL:
        rebuilt = rebuilt.replace(s, "")
    assert rebuilt == c.text


def test_developer_turns_and_schemas(checkpoint: Path, tmp_path: Path) -> None:
    """A `developer` turn is sent as `system`; a schema is asked for in the prompt; a template without a system
    role gets the system text at the head of the first user turn."""
    spec = f"transformers:{checkpoint}"
    dev = ({"role": "developer", "content": "Be brief."}, *HELLO)
    sys_ = ({"role": "system", "content": "Be brief."}, *HELLO)
    assert complete(spec, dev, max_tokens=8, seed=3) == complete(spec, sys_, max_tokens=8, seed=3)
    plain = complete(spec, max_tokens=4)
    shaped = complete(spec, schema={"type": "object", "properties": {"ok": {"type": "array"}}}, max_tokens=4)
    assert shaped.structured == "prompt" and shaped.tokens_in > plain.tokens_in  # a schema it cannot write to
    folded = tmp_path / "no-system"
    shutil.copytree(checkpoint, folded)
    (folded / "chat_template.jinja").write_text(NO_SYSTEM)
    merged = ({"role": "user", "content": "Be brief.\n\nHello there, how are you?"},)
    assert complete(f"transformers:{folded}", dev, max_tokens=8, seed=3) == complete(spec, merged, max_tokens=8,
                                                                                   seed=3)


def _schemas() -> list[dict[str, Any]]:
    from cai.constitution import load
    from cai.core.stages import OVERRIDE_SCHEMA, VERDICT_SCHEMA
    from cai.rbr.grader import classify_request, joint_schema

    const = load("rbr-safety")
    return [VERDICT_SCHEMA, OVERRIDE_SCHEMA, joint_schema(const), classify_request(const, list(HELLO)).schema or {}]


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_the_schemas_cai_asks_with_are_always_followed(checkpoint: Path, temperature: float) -> None:
    """The critic's verdict, the grader's joint propositions and response type: one valid object from a model with
    random weights, the same for the same seed."""
    jsonschema = pytest.importorskip("jsonschema")
    spec = f"transformers:{checkpoint}"
    for schema in _schemas():
        for seed in (0, 1):
            c = complete(spec, schema=schema, max_tokens=200, temperature=temperature, seed=seed)
            assert c.structured == "grammar" and c.top_logprobs is None, c
            jsonschema.validate(json.loads(c.text), schema)
            assert list(json.loads(c.text)) == list(schema["properties"])
            assert 0 < c.tokens_out and c.finish_reason in ("stop", "length")
            assert complete(spec, schema=schema, max_tokens=200, temperature=temperature, seed=seed) == c


def test_a_string_within_its_max_length_and_the_token_budget(checkpoint: Path) -> None:
    spec = f"transformers:{checkpoint}"
    schema = {"type": "object", "properties": {"note": {"type": "string", "maxLength": 5}, "ok": {"type": "boolean"}}}
    c = complete(spec, schema=schema, max_tokens=100, temperature=1.0, seed=0)
    assert len(json.loads(c.text)["note"]) <= 5
    long = {"type": "object", "properties": {"note": {"type": "string"}, "ok": {"type": "boolean"}}}
    replies = [complete(spec, schema=long, max_tokens=20, temperature=1.0, seed=s) for s in range(5)]
    for r in replies:  # cut by max_tokens or not, always the whole object
        assert set(json.loads(r.text)) == {"note", "ok"} and r.tokens_out <= 20
    assert "length" in {r.finish_reason for r in replies} and any(json.loads(r.text)["note"] for r in replies)


def test_the_estimate_counts_prompts_as_the_model_does(checkpoint: Path) -> None:
    counter = provider_class(f"transformers:{checkpoint}").token_counter(str(checkpoint))
    assert counter is not None
    for messages in (HELLO, ({"role": "developer", "content": "Be brief."}, *HELLO)):
        assert counter.count(Request(messages=messages)) == complete(f"transformers:{checkpoint}", messages,
                                                                     max_tokens=1).tokens_in


def test_identity_is_the_content_of_the_folder(checkpoint: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(checkpoint, copy)
    (copy / "README.md").write_text("a model card changes nothing\n")
    model = get_model(f"transformers:{checkpoint}")
    assert get_model(f"transformers:{copy}").identity() == model.identity()
    assert model.model_file() == {"file": "ckpt", "sha256": model.identity()["sha256"]}
    cfg = json.loads((copy / "generation_config.json").read_text())
    (copy / "generation_config.json").write_text(json.dumps({**cfg, "top_k": 5}))
    assert get_model(f"transformers:{copy}").identity() != model.identity()


def test_a_folder_trained_again_is_loaded_again(checkpoint: Path, tmp_path: Path) -> None:
    """In one process (a notebook that trains, evaluates, trains on): the new weights answer, under a new identity."""
    folder = tmp_path / "policy"
    shutil.copytree(checkpoint, folder)
    spec = f"transformers:{folder}"
    before, ident = complete(spec, max_tokens=12, temperature=0.0), get_model(spec).identity()
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(1)
        model.lm_head.weight.add_(torch.randn_like(model.lm_head.weight))
    model.save_pretrained(folder)
    assert get_model(spec).identity() != ident
    assert complete(spec, max_tokens=12, temperature=0.0).text != before.text


SMALL = ["--rounds", "1", "--max-tokens", "16", "--quality-gate", "off", "--quiet", "--json"]


def test_cai_run_with_every_role_on_the_checkpoint(checkpoint: Path, tmp_path: Path) -> None:
    """End to end, twice in new folders: the same exports."""
    inp = write_prompts(tmp_path / "in.jsonl", ["How do I bake bread?", "Name a colour."])
    spec = f"transformers:{checkpoint}"
    outs = []
    for name in ("a", "b"):
        res = cai("run", inp, "--out", tmp_path / name, "--model", spec, *SMALL)
        assert res.exit_code == 0, res.stderr
        summary = json.loads(res.stdout)
        assert summary["records"] == {"total": 2, "done": 2}
        assert summary["models"] == {"generator": spec, "critic": spec, "reviser": spec}
        assert all(t["tokens_in"] > 0 and t["tokens_out"] > 0 for t in summary["tokens"].values())
        assert [r["messages"][-1]["role"] for r in read_jsonl(tmp_path / name / "sft.jsonl")] == ["assistant"] * 2
        outs.append({f: (tmp_path / name / f).read_text() for f in ("sft.jsonl", "pairs.jsonl", "critiques.jsonl")})
    assert outs[0] == outs[1]
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert manifest["model_files"]["generator"]["file"] == "ckpt"
    critiques = read_jsonl(tmp_path / "a" / "critiques.jsonl")
    assert {c["id"] for c in critiques} == {"p0", "p1"} and all(c["parsed"] for c in critiques)


def test_a_generator_on_the_checkpoint_beside_a_served_critic(checkpoint: Path, tmp_path: Path,
                                                               stub_server: Any) -> None:
    inp = write_prompts(tmp_path / "in.jsonl", ["How do I bake bread?"])
    res = cai("run", inp, "--out", tmp_path / "r", "--generator", f"transformers:{checkpoint}", "--critic",
              "openai:stub", "--reviser", "openai:stub", "--base-url", stub_server.url, *SMALL,
              env={"OPENAI_API_KEY": "k"})
    assert res.exit_code == 0, res.stderr
    summary = json.loads(res.stdout)
    assert summary["models"]["generator"] == f"transformers:{checkpoint}"
    assert summary["tokens"]["generator"]["tokens_out"] > 0
    assert stub_server.count("/chat/completions") >= 1  # the critic's call, and the reviser's if it found fault
    assert [r["id"] for r in read_jsonl(tmp_path / "r" / "sft.jsonl")] == ["p0"]


def _bad_folder(tmp_path: Path, kind: str, checkpoint: Path) -> tuple[Path, str]:
    """A folder (or file) `transformers:` refuses, and the error it gives."""
    path = tmp_path / kind
    if kind == "missing":
        return path, f"error: {path}: no such folder; transformers:PATH takes a Hugging Face model folder"
    if kind == "file.gguf":
        path.write_bytes(b"GGUF")
        return path, (f"error: {path}: not a folder; transformers:PATH takes a Hugging Face model folder "
                      "(config.json, weights, tokenizer) (a GGUF file runs with local:PATH)")
    path.mkdir()
    if kind == "empty":
        return path, f"error: {path}: not a Hugging Face model folder: no config.json"
    shutil.copytree(checkpoint, path, dirs_exist_ok=True)
    if kind == "no-weights":
        (path / "model.safetensors").unlink()
        return path, f"error: {path}: not a Hugging Face model folder: no weights"
    if kind == "bad-weights":
        (path / "model.safetensors").write_bytes(b"not safetensors")
        return path, f"error: {path}: transformers cannot load this model: "
    (path / "chat_template.jinja").unlink()
    return path, f"error: {path}: the tokenizer has no chat template"


@pytest.mark.parametrize("kind", ["missing", "file.gguf", "empty", "no-weights", "bad-weights", "no-template"])
def test_a_folder_that_is_not_a_model_is_one_line_before_the_run_folder(checkpoint: Path, tmp_path: Path,
                                                                        kind: str) -> None:
    path, line = _bad_folder(tmp_path, kind, checkpoint)
    inp = write_prompts(tmp_path / "in.jsonl", ["hi?"])
    res = cai("run", inp, "--out", tmp_path / "r", "--generator", f"transformers:{path}")
    assert res.exit_code == 2, res.stderr
    assert one_line_error(res.stderr).startswith(line)
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("hidden", ["torch", "transformers"])
def test_without_the_train_extra_is_one_line(checkpoint: Path, tmp_path: Path, hidden: str) -> None:
    inp = write_prompts(tmp_path / "in.jsonl", ["hi?"])
    code = f"import sys; sys.modules[{hidden!r}] = None\nfrom cai.cli import main\nmain()\n"
    proc = subprocess.run([sys.executable, "-c", code, "run", str(inp), "--out", str(tmp_path / "r"), "--model",
                           f"transformers:{checkpoint}"], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.returncode == 2, proc.stderr
    assert one_line_error(proc.stderr) == ("error: the transformers provider needs the 'train' extra: pip install "
                                           f"'cai[train]' ({hidden} is not installed)")
    assert not (tmp_path / "r").exists()
