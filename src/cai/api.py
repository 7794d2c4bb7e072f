"""The library: `cai.arun`, `cai.run` and `cai.open_run`. The `cai` command is a thin layer over these.

    import cai
    r = cai.run(["How do I pick a lock?", "Write a haiku."], out="runs/nb", rounds=1, max_tokens=64)
    r.critiques()            # a DataFrame, verdict fields as columns
    cai.open_run("runs/nb").status()

Nothing here prints (unless `progress=True`), installs a signal handler or exits: failures are
exceptions from `cai.errors`. To stop a run, cancel its task (or interrupt `cai.run`); what was
committed is kept and the same call resumes.

This module is the composition layer: the core (`cai.runs`, `cai.core.pipeline`, `cai.read.export`, ...) never
imports a plugin, and neither does this layer: scorers, labelers, runners and manifest sections come from the
plugin registry (`cai.plugins`) by name, e.g. the "rbr" scorer that `rbr=True` builds, the "ray" runner, and rbr's
refusal metrics in the manifest of runs whose inputs carry `expected` (`manifest_extras`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, Unpack

from cai import plugins
from cai.core.engine import Engine
from cai.core.estimate import estimate as estimate_run
from cai.core.prices import load_prices
from cai.core.progress import Progress
from cai.errors import BudgetExhausted, InputError
from cai.options import RunOptions
from cai.providers.local_slots import set_local_slots
from cai.providers.local_weights import local_requantize as local_requantize_mode
from cai.read import explore
from cai.read.export import ManifestExtra
from cai.read.run import Run
from cai.runs import Runner, execute, normalize_out
from cai.settings import RunSettings

if TYPE_CHECKING:
    import pandas as pd

Prompts = str | os.PathLike[str] | Sequence[str] | Sequence[Sequence[dict[str, str]]] | Sequence[dict[str, Any]] | Any


def manifest_extras() -> tuple[ManifestExtra, ...]:
    """The `manifest.NAME` plugins: sections added to every export made through the API (and so the CLI)."""
    return tuple(plugins.load_all("manifest"))


class ProgressSink(Protocol):
    """What `progress=` may also be: `start(total, engine)` once, then `record_done(status)` per record (and, if it
    has them, `record_started()` as each record begins in this process and `record_skipped()` for each record
    this invocation leaves alone: done before, or not failed with `retry_failed`)."""

    def start(self, total: int, engine: Engine) -> None: ...

    def record_done(self, status: str) -> None: ...


class _Callback:
    """Adapts `progress=fn` to the sink: fn({"total", "done", "failed", "calls", "tokens_in", "tokens_out"})."""

    def __init__(self, fn: Callable[[dict[str, int]], None]) -> None:
        self.fn, self.total, self.done, self.failed = fn, 0, 0, 0
        self.engine: Engine | None = None

    def start(self, total: int, engine: Engine) -> None:
        self.total, self.engine = total, engine

    def record_done(self, status: str) -> None:
        self.done += 1
        self.failed += status == "failed"
        st = self.engine.stats if self.engine else None
        self.fn({"total": self.total, "done": self.done, "failed": self.failed,
                 "calls": st.calls if st else 0, "tokens_in": st.tokens_in if st else 0,
                 "tokens_out": st.tokens_out if st else 0})


def _rows(prompts: Prompts) -> list[dict[str, Any]]:
    """In-memory prompts as input rows: strings, message lists, dicts, or a DataFrame's rows."""
    if hasattr(prompts, "to_dict") and hasattr(prompts, "columns"):  # a pandas DataFrame
        if "prompt" not in prompts.columns and "messages" not in prompts.columns:
            raise InputError("the DataFrame needs a `prompt` or `messages` column")
        prompts = prompts.to_dict(orient="records")
    rows: list[dict[str, Any]] = []
    for i, p in enumerate(prompts):
        if isinstance(p, str):
            rows.append({"id": f"p{i}", "prompt": p})
        elif isinstance(p, dict):
            rows.append({"id": f"p{i}", **{k: v for k, v in p.items() if v is not None}})
        elif isinstance(p, Sequence):
            rows.append({"id": f"p{i}", "messages": [dict(m) for m in p]})
        else:
            raise InputError(f"prompt {i} must be a string, a message list or a dict, not {type(p).__name__}")
    if hasattr(prompts, "__len__") and not rows:
        raise InputError("no prompts")
    return rows


@contextlib.contextmanager
def _input_file(prompts: Prompts, out: str | os.PathLike[str] | None) -> Iterator[tuple[str, str]]:
    """(input path, run folder) for the block: a path is used as it is; in-memory prompts become a JSONL file named
    by its content (the same prompts resume the same run) in a temp folder of this call's own, removed after it."""
    if isinstance(prompts, (str, os.PathLike)):
        path = Path(prompts)
        yield str(path), str(out or Path("runs") / path.stem)
        return
    blob = "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in _rows(prompts))
    digest = hashlib.sha256(blob.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    with tempfile.TemporaryDirectory(prefix="cai-input-") as tmp:
        path = Path(tmp) / f"{digest}.jsonl"
        path.write_text(blob, encoding="utf-8", errors="surrogatepass")
        yield str(path), str(out or Path("runs") / f"run-{digest}")


async def arun(prompts: Prompts, *, progress: bool | Callable[[dict[str, int]], None] | ProgressSink = False,
               command: list[str] | None = None, **options: Unpack[RunOptions]) -> Run:
    """Draft, critique and revise every prompt into the run folder `out`, export, and return the `Run`.

    `prompts`: a .jsonl/.txt/.csv path, a list of strings, of message lists or of dicts (`prompt` or
    `messages`, optional `id`, other fields kept), or a DataFrame with a `prompt` or `messages` column.
    `constitution`: a shipped name or a YAML path, or several as layers, platform first.
    Every other option is the `cai run` option of the same name (`cai.options.RunOptions`), with its default
    where it is not given or None (`fewshot`: worked examples in the critic's and reviser's prompts, all of
    prompts/fewshot.yaml by default; `candidates` ≥ 2 or `candidates_from` with revisions turns AI preference
    labels on, with `judge`, `cot`, `votes`, `min_margin`, `rank_by`; an option of a part that stays off, such
    as `grader` without `rbr=True`, is an InputError naming it).
    `engine="ray"` shards the records to Ray worker actors (the `ray` extra; `ray_address` "auto" or HOST:PORT
    joins a cluster, else a local instance is started; `workers` actors, default the cluster's CPUs up to 8).
    `local_slots`: sequences the embedded model decodes together in this process (1: one at a time; default
    CAI_LOCAL_SLOTS, else 1). `local_requantize`: the weights a local model loads (`auto`: the shipped GGUF as Q8_0,
    a file of your own as it is; `q8_0`, `q4_0`, `off`; default CAI_LOCAL_REQUANTIZE, else auto; docs/local.md).
    `progress`: True prints the CLI's progress on stderr (on a terminal, one line updated in place; otherwise a
    line every `log_every` seconds, as text or `log_format="json"`); False (the default) prints nothing, whatever
    `log_every` and `log_format` say; a function gets a dict of counts after each record. `command` is recorded
    for `cai status`'s resume command (the CLI passes its argv). Re-running the same call resumes.
    """
    restart = bool(options.pop("restart", None))
    with _input_file(prompts, options.pop("out", None)) as (path, folder):
        prices = options.get("prices")
        price_table = load_prices(str(prices) if prices else None)  # a bad table fails before any call
        # local_requantize: the process's setting, resolved here so that Ray workers load the same weights
        settings = RunSettings.from_options(**{**options, "local_requantize": options.get("local_requantize")
                                               or local_requantize_mode()}, input=path, out=normalize_out(folder))
        if settings.execution.local_slots is not None:
            set_local_slots(settings.execution.local_slots)
        runner, extras = _runner(settings), manifest_extras()
        sink: ProgressSink | None
        if progress is True:
            sink = Progress(prices=price_table)
        elif callable(progress) and not hasattr(progress, "record_done"):
            sink = _Callback(progress)  # type: ignore[arg-type]
        else:
            sink = progress or None  # type: ignore[assignment]
        if isinstance(sink, Progress):  # it reports as the run's options say
            sink.every, sink.format = settings.execution.log_every, settings.execution.log_format
        try:
            manifest = await execute(settings, restart=restart, command=command,
                                     on_start=sink.start if sink else None, on_done=sink.record_done if sink else None,
                                     on_begin=getattr(sink, "record_started", None),
                                     on_skip=getattr(sink, "record_skipped", None), manifest_extras=extras,
                                     runner=runner)
        except BudgetExhausted as e:  # what is done is exported: the error carries the run, as far as it got
            invocation = getattr(e, "manifest", {}).get("this_invocation")
            e.run = Run(settings.io.out, invocation=invocation, manifest_extras=extras)  # type: ignore[attr-defined]
            raise
        finally:
            if isinstance(sink, Progress):
                sink.stop()
        return Run(settings.io.out, invocation=manifest["this_invocation"], manifest_extras=extras)


def estimate(prompts: Prompts, **options: Unpack[RunOptions]) -> dict[str, Any]:
    """What `arun(prompts, **options)` would cost, without a model call and without creating anything: per role
    (generator, critic, reviser, grader, judge) its calls, input tokens, output tokens (at most: max_tokens each;
    and `expected` from the calls the run or `cache` already has), and the cost at the standard price, the batch
    price and with `fewshot=0`; totals; `notes`, a line per caveat. Records done in `out` are not counted (what
    finishing the run costs). See `cai.core.estimate` and docs/cost.md."""
    restart = bool(options.pop("restart", None))
    with _input_file(prompts, options.pop("out", None)) as (path, folder):
        prices = options.get("prices")
        price_table = load_prices(str(prices) if prices else None)
        settings = RunSettings.from_options(**options, input=path, out=normalize_out(folder))
        return estimate_run(settings, price_table, restart=restart)


def _runner(settings: RunSettings) -> Runner | None:
    """The Ray runner for `engine="ray"` (None: this process). The plugin is imported only then: Ray is an
    optional extra and a heavy import."""
    ex = settings.execution
    if ex.engine != "ray":
        if ex.ray_address or ex.workers:
            raise InputError("ray_address and workers need engine='ray' (--engine ray)")
        return None
    try:
        return plugins.load("runner", ex.engine)(ex)  # type: ignore[no-any-return]
    except ImportError as e:
        raise InputError(f"--engine ray needs Ray: pip install 'cai[ray]' ({e})") from None


def run(prompts: Prompts, *, progress: bool | Callable[[dict[str, int]], None] | ProgressSink = False,
        command: list[str] | None = None, **options: Unpack[RunOptions]) -> Run:
    """`arun`, synchronously. Inside a running event loop (a notebook cell) or from any thread it runs on a
    private event loop in a worker thread, so it works wherever it is called."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(arun(prompts, progress=progress, command=command, **options))
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="cai-run") as pool:
        return pool.submit(asyncio.run, arun(prompts, progress=progress, command=command, **options)).result()


def open_run(path: str | os.PathLike[str]) -> Run:
    """A read-only view of the run folder `path`: safe while another process writes it (each read is a
    committed snapshot; it takes no lock and never writes). InputError if it is not a cai run."""
    return Run(path, manifest_extras=manifest_extras())


def compare(a: Run | str | os.PathLike[str], b: Run | str | os.PathLike[str], by: str = "metric") -> pd.DataFrame:
    """Two runs (or run folders) over the same prompts side by side: violation rate, severity, lengths and
    rewards per run and their difference (`by="prompt"`: one row per prompt). See `cai.read.explore.compare`."""
    return explore.compare(a if isinstance(a, Run) else open_run(a), b if isinstance(b, Run) else open_run(b), by)
