"""Train a policy on a cai run: SFT on its `sft` rows, then DPO on its `pairs`, with TRL on the CPU.

    pip install -e '.[local,train]'
    cai run examples/prompts.jsonl --out runs/demo --limit 6 --max-tokens 64
    python examples/train_dpo.py runs/demo --out models/demo-dpo

SOURCE is a run folder (written first as a Hugging Face dataset folder, as `cai export --hf` does, into
OUT/dataset) or such a folder already. The policy is the embedded model (SmolLM2-135M-Instruct, dequantized once
from the GGUF that cai runs, see `cai.providers.hf_checkpoint`) unless --policy names a checkpoint folder. OUT gets
the trained model, its tokenizer, `training.json` (the losses of each step) and a model card (README.md) that
carries the dataset card's provenance table: the models of each role, the constitution and its sha256, the counts,
what the quality gate kept out and what people's reviews did.

The chat template: TRL applies the tokenizer's own template to the message lists. `developer` turns become
`system` turns with --system-role-for-developer (a run folder: as `cai export --system-role-for-developer` writes
them; without the flag, as the run's setting says); otherwise they reach the template as `developer`.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from cai.errors import CaiError, InputError
from cai.providers.hf_checkpoint import EMBEDDED, embedded_checkpoint, shipped_gguf
from cai.providers.local_weights import file_sha256
from cai.read.hf import README, write_hf
from cai.read.rows import developer_as_system_turns


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("source", type=Path, help="a run folder, or a folder written by `cai export --hf DIR`")
    p.add_argument("--out", type=Path, required=True, help="where the trained model goes")
    p.add_argument("--policy", default=EMBEDDED, help="a checkpoint folder, or 'embedded' (default)")
    p.add_argument("--sft-steps", type=int, default=10, help="SFT steps on `sft` first (0: none; default 10)")
    p.add_argument("--steps", type=int, default=10, help="DPO steps on `pairs` (default 10)")
    p.add_argument("--lr", type=float, default=5e-6, help="learning rate of both stages (default 5e-6)")
    p.add_argument("--beta", type=float, default=0.1, help="DPO's beta (default 0.1)")
    p.add_argument("--batch-size", type=int, default=2, help="rows per step (default 2)")
    p.add_argument("--max-length", type=int, default=512, help="tokens per row, longer ones cut (default 512)")
    p.add_argument("--seed", type=int, default=0, help="seed of the data order and dropout (default 0)")
    p.add_argument("--system-role-for-developer", action="store_true",
                   help="write `developer` turns as `system` turns before the chat template sees them")
    return p.parse_args(argv)


def dataset_folder(args: argparse.Namespace) -> Path:
    """The Hugging Face dataset folder to train on: SOURCE itself, or SOURCE (a run) written to OUT/dataset."""
    if (args.source / "run.sqlite").is_file():
        dest = args.out / "dataset"
        write_hf(args.source, dest, developer_as_system=True if args.system_role_for_developer else None)
        return dest
    if not (args.source / README).is_file():
        raise InputError("neither a run folder (run.sqlite) nor a `cai export --hf` folder", path=str(args.source))
    return args.source


def load(folder: Path, config: str, columns: list[str], developer_as_system: bool) -> Any:
    """One configuration's train split with only the columns TRL reads (None when it has no rows)."""
    import datasets

    if not (folder / config).is_dir():
        return None
    data = datasets.load_dataset(str(folder), config, split="train").select_columns(columns)
    if developer_as_system:
        turns = [c for c in columns if c != "chosen" and c != "rejected"]
        data = data.map(lambda row: {c: developer_as_system_turns(row[c]) for c in turns})
    return data


def provenance(folder: Path) -> list[tuple[str, str]]:
    """The provenance table of the dataset card (label, cell), as `cai export --hf` wrote it."""
    text = (folder / README).read_text(encoding="utf-8")
    return re.findall(r"^\| (.+?) \| (.*) \|$", text, re.M)


def policy_path(args: argparse.Namespace) -> tuple[Path, str]:
    """The checkpoint to start from and how the card names it."""
    if args.policy == EMBEDDED:
        gguf = shipped_gguf()
        return embedded_checkpoint(gguf), f"the embedded model ({gguf.name}, sha256 {file_sha256(gguf)}, dequantized)"
    path = Path(args.policy)
    return path, f"`{path}`"


def common(args: argparse.Namespace, work: Path, steps: int) -> dict[str, Any]:
    """The trainer arguments both stages share: CPU, bounded steps, no checkpoints, a progress bar."""
    return {"output_dir": str(work), "max_steps": steps, "learning_rate": args.lr, "seed": args.seed,
            "per_device_train_batch_size": args.batch_size, "gradient_accumulation_steps": 1,
            "max_length": args.max_length, "use_cpu": True, "logging_steps": 1, "save_strategy": "no",
            "report_to": [], "disable_tqdm": False, "dataloader_num_workers": 0}


def losses(trainer: Any) -> list[float]:
    return [float(h["loss"]) for h in trainer.state.log_history if "loss" in h]


def frozen_copy(model: Any) -> Any:
    """A copy of `model` that no optimiser changes, in evaluation mode."""
    ref = copy.deepcopy(model).eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref


def train(args: argparse.Namespace, folder: Path) -> tuple[Any, Any, dict[str, Any]]:
    """SFT (when asked and there are sft rows), then DPO; the model, its tokenizer and what each stage did."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

    start, named = policy_path(args)
    tokenizer = AutoTokenizer.from_pretrained(start)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(start, dtype=torch.float32)
    dev = args.system_role_for_developer and not (args.source / "run.sqlite").is_file()
    sft = load(folder, "sft", ["messages"], dev)
    pairs = load(folder, "pairs", ["prompt", "chosen", "rejected"], dev)
    if pairs is None and args.steps:
        raise InputError("no pairs to train DPO on (every pair was dropped; see its README.md)", path=str(folder))
    done: dict[str, Any] = {"policy": named}
    with tempfile.TemporaryDirectory() as work:
        if args.sft_steps and sft is not None:
            t = time.monotonic()
            trainer = SFTTrainer(model=model, args=SFTConfig(**common(args, Path(work), args.sft_steps)),
                                 train_dataset=sft, processing_class=tokenizer)
            trainer.train()
            done["sft"] = {"steps": args.sft_steps, "rows": len(sft), "loss": losses(trainer),
                           "seconds": round(time.monotonic() - t, 1)}
            model = trainer.model
        if args.steps:
            t = time.monotonic()
            config = DPOConfig(**common(args, Path(work), args.steps), beta=args.beta)
            # Without `ref_model` TRL loads the reference from the folder the model came from: the policy before
            # SFT. DPO's reference is the model it starts from, so after SFT it is a frozen copy of that model.
            ref = frozen_copy(model) if "sft" in done else None
            trainer = DPOTrainer(model=model, ref_model=ref, args=config, train_dataset=pairs,
                                 processing_class=tokenizer)
            trainer.train()
            done["dpo"] = {"steps": args.steps, "rows": len(pairs), "beta": args.beta, "loss": losses(trainer),
                           "reference": "the SFT model" if ref is not None else "the policy",
                           "seconds": round(time.monotonic() - t, 1)}
            model = trainer.model
    return model, tokenizer, done


def card(args: argparse.Namespace, folder: Path, done: dict[str, Any]) -> str:
    """The model card (README.md): what was trained from what, and the dataset's provenance."""
    stages = []
    for name, what in (("sft", "SFT on `sft`"), ("dpo", "DPO on `pairs`")):
        if name in done:
            d = done[name]
            last = f"{d['loss'][-1]:.4f}" if d["loss"] else "none"
            dpo = f", beta {d['beta']}, reference {d['reference']}" if name == "dpo" else ""
            stages.append(f"- {what}: {d['steps']} steps of {args.batch_size} rows ({d['rows']} rows in all), "
                          f"learning rate {args.lr}{dpo}, last loss {last}, {d['seconds']} s")
    table = "\n".join(f"| {k} | {v} |" for k, v in provenance(folder))
    return f"""---
library_name: transformers
tags: [cai, constitutional-ai, trl, sft, dpo]
---

# {args.out.name}

Trained with TRL from {done["policy"]}, on the dataset `{folder}` that cai wrote (seed {args.seed}, CPU):

{chr(10).join(stages) or "- no training step"}

`training.json` has the loss of every step. A few steps on a small dataset: check what changed (for example by
running cai with this model as the generator) before using it.

## The dataset

| | |
|---|---|
{table}
"""


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    try:
        folder = dataset_folder(args)
        model, tokenizer, done = train(args, folder)
    except CaiError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    for stage in ("sft", "dpo"):
        if stage in done and not all(math.isfinite(x) for x in done[stage]["loss"]):
            print(f"error: the {stage} loss is not finite: {done[stage]['loss']}", file=sys.stderr)
            return 1
    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.out)
    tokenizer.save_pretrained(args.out)
    (args.out / "training.json").write_text(json.dumps(done, indent=2) + "\n", encoding="utf-8")
    (args.out / "README.md").write_text(card(args, folder, done), encoding="utf-8")
    print(f"saved {args.out}: " + ", ".join(f"{k} loss {v['loss'][-1]:.4f}" for k, v in done.items()
                                            if isinstance(v, dict) and v["loss"]), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
