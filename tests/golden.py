"""Golden outputs: seeded runs of cai against the loopback stub servers and their exports, normalized.

`tests/data/golden/make.py` records them under tests/data/golden/<case>/; tests/test_golden.py makes them again
into a temporary folder and compares. Both use `produce` and the normalizers here, so what is recorded is what is
compared. A case folder holds the run's sft/pairs/critiques(/labels).jsonl as written, manifest.json with its
volatile fields replaced by markers (`normalize_manifest`), parquet/*.parquet from `cai export RUN --format
parquet`, and hf/ from `cai export RUN --hf DIR` (its README.md card normalized by `normalize_card`).

The stub's replies are functions of the request alone (tests/servers.py): the messages, plus here the sampling
seed for candidates and scripted logprobs for the judge and the grader, so the outputs do not depend on the order
in which concurrent requests arrive.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from servers import StubServer, request_digest, words_for

TESTS = Path(__file__).resolve().parent
GOLDEN = TESTS / "data" / "golden"
INPUTS = GOLDEN / "inputs"
OLD_STORE = GOLDEN / "old-store" / "run.sqlite"  # the plain case's finished run
FAILED_STORE = GOLDEN / "old-store" / "failed.sqlite"  # the plain case with one record failed (`fail_one_revision`)
CALL_CACHE = GOLDEN / "old-store" / "calls.sqlite"  # the shared call cache (--cache) of the plain case's calls
# The old stores' runs were made against a stub on this port, and a run's base URL is part of its models' identity
# (a resume against another URL is a config mismatch), so the tests resume them against a stub on the same port
# (`old_store_server`). It lies below Linux's ephemeral range (32768-60999), so no port the kernel picks for a
# client or a free-port server can hold it.
OLD_STORE_PORT = 29417
MAKE = "python tests/data/golden/make.py"  # the command that records the golden outputs again
KEY = "sk-golden-test-0123456789"
JSONL = ("sft", "pairs", "critiques", "labels")
COMMON = ("--max-tokens", "16", "--seed", "7")
BATCH_TICKS = 10  # a batch job of one round has three stages; ticks past that mean it is stuck

# Manifest fields that differ between two runs of the same work, and the marker each becomes.
VOLATILE = {"cai_version": "<version>", "started": "<time>", "ended": "<time>", "wall_seconds": "<seconds>"}
_LOOPBACK = re.compile(r"http://127\.0\.0\.1:\d+")
_CARD = ((re.compile(r"written by cai \S+?:"), "written by cai <version>:"),
         (re.compile(r"\| cai version \| .*? \|"), "| cai version | <version> |"),
         (re.compile(r"\| last run ended \(UTC\) \| .*? \|"), "| last run ended (UTC) | <time> |"))


@dataclass(frozen=True)
class Case:
    """One golden run: `cai run INPUT` (or `cai batch submit` + ticks) with `args` ({work} is the case's folder)."""

    name: str
    input: str
    args: tuple[str, ...]
    provider: str = "openai"
    scripted: bool = False  # candidates differ by seed; the judge and grader answer with scripted logprobs
    batch: bool = False
    ray: bool = False


CASES = {c.name: c for c in (
    Case("plain", "prompts.jsonl", ("--rounds", "2")),
    Case("rbr", "rbr.jsonl", ("--rounds", "1", "--rbr"), scripted=True),
    Case("candidates", "prompts.jsonl", ("--rounds", "1", "--candidates", "3"), scripted=True),
    Case("layers", "prompts.jsonl", ("--rounds", "2", "--constitution", "model-spec", "--constitution",
                                     "{work}/team.yaml"), provider="anthropic"),
    Case("batch", "prompts.jsonl", ("--rounds", "1"), batch=True),
    Case("ray", "prompts.jsonl", ("--rounds", "1", "--engine", "ray", "--workers", "2"), ray=True),
)}


# -------------------------------------------------------------------------------------------------
# Normalizing


def _string(text: str, work: Path) -> str:
    """`text` with loopback ports marked and absolute paths made relative to `work` (`<work>/...`) or, for
    files elsewhere (shipped constitutions: the checkout or an installed package), cut to `<abs>/NAME`."""
    text = _LOOPBACK.sub("http://127.0.0.1:<port>", text)
    if not os.path.isabs(text):
        return text
    path = Path(text)
    for root in (work, work.resolve()):
        with contextlib.suppress(ValueError):
            return "<work>/" + path.relative_to(root).as_posix()
    return "<abs>/" + path.name


def _strings(value: Any, work: Path) -> Any:
    if isinstance(value, str):
        return _string(value, work)
    if isinstance(value, dict):
        return {k: _strings(v, work) for k, v in value.items()}
    if isinstance(value, list):
        return [_strings(v, work) for v in value]
    return value


def normalize_manifest(data: dict[str, Any], work: Path) -> str:
    """manifest.json content without what differs between two runs of the same work (see VOLATILE, ports,
    paths), as sorted, indented JSON text."""
    out = _strings(data, work)
    for key, marker in VOLATILE.items():
        if out.get(key) is not None:
            out[key] = marker
    return json.dumps(out, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def normalize_card(text: str) -> str:
    """A Hugging Face dataset card without the cai version, the end time and loopback ports."""
    for pattern, marker in _CARD:
        text = pattern.sub(marker, text)
    return _LOOPBACK.sub("http://127.0.0.1:<port>", text)


# -------------------------------------------------------------------------------------------------
# Running


def cli(*args: Any, code: int = 0) -> Any:
    """`cai ARGS` in this process with the test keys; AssertionError with its stderr unless it exits `code`."""
    from helpers import cai

    res = cai(*args, env={"OPENAI_API_KEY": KEY, "ANTHROPIC_API_KEY": KEY})
    assert res.exit_code == code, f"cai {' '.join(map(str, args))} exited {res.exit_code}: {res.stderr}"
    return res


def fail_one_revision(srv: StubServer) -> None:
    """Make the first revision request of the `haiku` prompt fail with a 400 (not retried): that record fails
    after its draft and first critique are paid for and stored."""
    srv.add_fault("400", when=lambda path, body: "tin roof" in json.dumps(body) and "Revision request" in
                  json.dumps(body))


def scripted_logprobs(body: dict[str, Any]) -> list[list[tuple[str, float]]]:
    """A judge's A/B or a grader's Yes/No logprobs, P derived from the request's messages."""
    digest = request_digest("openai", body)
    p = 0.05 + 0.9 * digest[0] / 255
    judge = "Response (A)" in json.dumps(body.get("messages"))
    first, second = ("A", " B") if judge else (" Yes", " No")
    return [sorted([(first, math.log(p)), (second, math.log(1 - p))], key=lambda t: -t[1])]


def seeded_reply(kind: str, body: dict[str, Any]) -> str | None:
    """Plain replies that differ by the request's sampling seed (so candidates differ); None (the stub's
    default) for structured and logprobs requests."""
    if body.get("response_format") or body.get("logprobs") or body.get("tools"):
        return None
    digest = hashlib.sha256(request_digest(kind, body) + str(body.get("seed")).encode()).digest()
    return " ".join(words_for(digest, 12))


def url(srv: StubServer, case: Case) -> str:
    return srv.url if case.provider == "openai" else srv.anthropic_url


def run_args(case: Case, work: Path, srv: StubServer) -> list[str]:
    """The options of the case's `cai run` / `cai batch submit` after the input."""
    return ["--out", str(work / case.name), "--model", f"{case.provider}:stub", "--base-url", url(srv, case),
            *COMMON, *(a.format(work=work) for a in case.args)]


def server(case: Case, port: int = 0) -> StubServer:
    """A fresh, unstarted server for the case (a BatchServer for batch jobs) on `port` (0: a free one)."""
    if case.batch:
        from batch_servers import BatchServer

        return BatchServer(port=port)
    if case.scripted:
        return StubServer(port=port, logprobs_fn=scripted_logprobs, reply_fn=seeded_reply)
    return StubServer(port=port)


@contextlib.contextmanager
def old_store_server(case: Case) -> Iterator[StubServer]:
    """The case's server, started on OLD_STORE_PORT while this process holds an exclusive lock on a file named
    after the port in the temp folder, so that test runs side by side on one machine take turns on the port."""
    lock = Path(tempfile.gettempdir()) / f"cai-golden-port-{OLD_STORE_PORT}.lock"
    with open(lock, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        srv = server(case, OLD_STORE_PORT)
        try:
            srv.start()
        except OSError as e:
            raise AssertionError(f"the stub cannot listen on 127.0.0.1:{OLD_STORE_PORT}, the port of the old "
                                 f"stores' runs (tests/golden.py OLD_STORE_PORT): {e}") from e
        with srv:
            yield srv


@contextlib.contextmanager
def ray_cluster(case: Case) -> Iterator[None]:
    """A local 2-CPU Ray instance for a Ray case (the one this process has, if any); nothing otherwise."""
    if not case.ray:
        yield
        return
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        yield
    finally:
        if started:
            ray.shutdown()


def copy_inputs(work: Path) -> None:
    work.mkdir(parents=True, exist_ok=True)
    for f in INPUTS.iterdir():
        shutil.copyfile(f, work / f.name)


def run_case(case: Case, work: Path, srv: StubServer) -> Path:
    """Run the case in `work` (its inputs copied there first) against the started `srv`; returns the run folder."""
    copy_inputs(work)
    inp = work / case.input
    if not case.batch:
        with ray_cluster(case):
            cli("run", inp, *run_args(case, work, srv), "--quiet")
        return work / case.name
    cli("batch", "submit", inp, *run_args(case, work, srv))
    for _ in range(BATCH_TICKS):
        srv.finish_all()  # type: ignore[attr-defined]
        if json.loads(cli("batch", "tick", work / case.name, "--json").stdout)["complete"]:
            return work / case.name
    raise AssertionError(f"the batch job was not complete after {BATCH_TICKS} ticks")


# -------------------------------------------------------------------------------------------------
# Recording


def record(run: Path, work: Path, dest: Path) -> None:
    """Write the run's exports into `dest`, normalized: JSONL as written, manifest.json, then the Hugging Face
    folder (hf/) and the Parquet exports (parquet/; this replaces the run's JSONL files, so it comes last)."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in JSONL:
        if (run / f"{name}.jsonl").exists():
            shutil.copyfile(run / f"{name}.jsonl", dest / f"{name}.jsonl")
    manifest = json.loads((run / "manifest.json").read_text(encoding="utf-8"))
    (dest / "manifest.json").write_text(normalize_manifest(manifest, work), encoding="utf-8")
    hf = work / "hf"
    cli("export", run, "--hf", hf)
    for part in sorted(hf.glob("*/*.parquet")):
        (dest / "hf" / part.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(part, dest / "hf" / part.parent.name / part.name)
    (dest / "hf" / "README.md").write_text(normalize_card((hf / "README.md").read_text(encoding="utf-8")),
                                           encoding="utf-8")
    cli("export", run, "--format", "parquet")
    (dest / "parquet").mkdir(exist_ok=True)
    for part in sorted(run.glob("*.parquet")):
        shutil.copyfile(part, dest / "parquet" / part.name)


def produce(case: Case, work: Path, dest: Path) -> Path:
    """Run `case` in `work` against a fresh server and record its exports into `dest`; returns the run folder."""
    with server(case) as srv:
        run = run_case(case, work, srv)
    record(run, work, dest)
    return run


def files(folder: Path) -> dict[str, Path]:
    """Every file under `folder` by its relative POSIX path."""
    return {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*")) if p.is_file()}
