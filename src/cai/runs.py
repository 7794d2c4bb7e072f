"""A run directory: open or create it, refuse foreign folders and changed configurations, then run."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from cai import constitution as constitution_mod
from cai.calls import output_defaults, output_settings
from cai.core.budget import Budget, role_rates, run_cost
from cai.core.engine import Engine
from cai.core.pipeline import Pipeline, least_request_tokens
from cai.core.prices import load_prices
from cai.core.records import InputScan, scan_input, scanned_records
from cai.core.scoring import Labeler, Scorer, make_labeler, make_scorer
from cai.errors import BudgetExhausted, ConfigMismatch, InputError
from cai.providers import Model, get_model
from cai.providers.local_slots import calls_in_flight
from cai.providers.local_weights import resume_hint, set_local_requantize
from cai.read.export import ManifestExtra, export_run
from cai.redact import clean_url, redact
from cai.settings import ExecutionSettings, RunSettings
from cai.store import Store
from cai.store.callcache import CallCache
from cai.store.folder import locked_store


def normalize_out(out: str | Path) -> Path:
    """`a/../b` → `b`, so creating the folder leaves no stray `a/`."""
    return Path(os.path.normpath(out))


INPUT_KEYS = ("input_sha256", "input_bytes", "input_lines")
# Meta a plugin that sends calls outside the engine keeps up to date (cai.batch): how many of the run's calls are
# with a provider now. A plain run refuses to start while any are, since it would send (and pay for) them again.
CALLS_IN_FLIGHT = "calls_in_flight"


def fingerprint(settings: RunSettings, models: dict[str, Any], const_sha: str, input_sha: str,
                plugins: dict[str, Any] | None = None, *, input_bytes: int | None = None,
                input_lines: int | None = None, layers: dict[str, str] | None = None) -> dict[str, Any]:
    """What must not change between invocations of one run: the models' identities, the constitution's
    content hash (of a stack of layers, a hash of their hashes, and `layers`, each layer's hash by name),
    every output-affecting setting (derived from the OUTPUT marks) and the plugins' parts
    (`RunPlugins.fingerprint`); and the input's sha256, size and line count, which may change only by rows
    appended to the file (`check_input`)."""
    fp = {"models": models, **({"constitution_layers": layers} if layers else {}), "constitution_sha256": const_sha,
          "input_sha256": input_sha, **output_settings(settings), **(plugins or {})}
    if input_bytes is not None:
        fp["input_bytes"], fp["input_lines"] = input_bytes, input_lines
    return fp


def check_fingerprint(store: Store, fp: dict[str, Any], settings: RunSettings | None = None,
                      scan: InputScan | None = None) -> int:
    """Store `fp` on a new run; on an existing one, ConfigMismatch naming the first field that differs. Given
    `scan` (of the file `fp`'s input fields describe), the input may also have grown (`check_input`);
    without it, the input fields are compared like the others. Returns how many lines the input had at the
    previous invocation (0 on a new run)."""
    old = store.get_meta("fingerprint")
    if old is None:
        _save_input(store, fp, scan, 0)
        return 0
    skip = INPUT_KEYS if scan is not None else ()
    keys = [*fp, *(k for k in old if k not in fp)]  # a field present on one side only differs too…
    defaults = output_defaults(type(settings)) if settings is not None else {}
    diff = [k for k in keys if k not in skip and old.get(k) != fp.get(k)
            and not (k not in old and k in defaults and fp.get(k) == defaults[k])]  # …unless added later at its default
    if diff:
        raise _mismatch(store, diff[0], old, fp)
    return check_input(store, old, fp, scan) if scan is not None else 0


def check_input(store: Store, old: dict[str, Any], fp: dict[str, Any], scan: InputScan) -> int:
    """A run's input may only grow: the same file, or rows appended to it (a last line without a newline may
    get one first). Returns the lines it had at the previous invocation and stores `fp` with the new lines'
    hashes; ConfigMismatch naming the first changed (or missing) line of the file otherwise.

    The stored per-line hashes, compared with the scan's, name the changed line (a file whose lines are all
    unchanged, e.g. one that lost its last newline, is accepted). A run from before per-line hashes resumes an
    unchanged file and keeps them from then on; a changed one is refused as before."""
    before = old.get("input_lines")
    fp = {**old, **{k: fp[k] for k in INPUT_KEYS}}  # the rest stays as the run stored it
    if old.get("input_sha256") == fp["input_sha256"]:
        if before is None:
            _save_input(store, fp, scan, 0)
        return fp["input_lines"]
    if before is None or old.get("input_bytes") is None:
        raise _mismatch(store, "input_sha256", old, fp)
    n = 0
    with contextlib.closing(store.input_lines(before)) as stored:
        for n, line in enumerate(stored, start=1):
            now = scan.line_hash(n)
            if now != line:
                why = ("this row changed since the run read it" if now is not None else
                       f"this row is gone: the file now ends at line {n - 1}, it had {before} lines when the run "
                       "read it")
                raise ConfigMismatch(f"{why} (a run's input may only grow, by rows appended at its end); "
                                     "restore it, or use --restart to start afresh (the old run is moved "
                                     "aside)", path=scan.path, line=n)
    if n < before:  # the stored hashes are incomplete: nothing tells which line changed
        raise _mismatch(store, "input_sha256", old, fp)
    _save_input(store, fp, scan, before)
    return before


def _save_input(store: Store, fp: dict[str, Any], scan: InputScan | None, after: int) -> None:
    """Store `fp` with the hashes of the input's lines past line `after` (from `scan`), in one transaction."""
    if scan is None or "input_lines" not in fp:
        store.set_meta("fingerprint", fp)
        return
    store.save_input(fp, scan.line_hashes(after))


def _mismatch(store: Store, field: str, old: dict[str, Any], fp: dict[str, Any]) -> ConfigMismatch:
    if field == "constitution_layers" and isinstance(old.get(field), dict) and isinstance(fp.get(field), dict):
        was, now = old[field], fp[field]
        if list(was) == list(now):
            changed = ", ".join(f"{k!r} (sha256 {was[k][:12]}… → {now[k][:12]}…)" for k in was if was[k] != now[k])
            return ConfigMismatch(f"this run was started with other contents of constitution layer(s) {changed}; "
                                  "use the same files to resume, or --restart to start afresh (the old run is "
                                  "moved aside)", path=str(store.run_dir))
    if field == "models" and (hint := resume_hint(old.get(field) or {}, fp.get(field) or {})):
        return ConfigMismatch(hint, path=str(store.run_dir))
    where, was, now = first_difference(field, old.get(field, ABSENT), fp.get(field, ABSENT))
    return ConfigMismatch(f"this run was made with {where}={_shown(was)}; now {_shown(now)} (resume with the "
                          "same settings, or use --restart to start afresh: the old run is moved aside)",
                          path=str(store.run_dir))


ABSENT = object()  # a fingerprint field or key missing on one side


def first_difference(path: str, was: Any, now: Any) -> tuple[str, Any, Any]:
    """The dotted path of the first value where `was` and `now` differ (descending into dicts, but not into a
    model's identity), and its two values (`ABSENT` where one side lacks it)."""
    if isinstance(was, dict) and isinstance(now, dict) and _model_spec(was) is None and _model_spec(now) is None:
        for key in [*was, *(k for k in now if k not in was)]:
            if was.get(key, ABSENT) != now.get(key, ABSENT):
                return first_difference(f"{path}.{key}", was.get(key, ABSENT), now.get(key, ABSENT))
    return path, was, now


def _model_spec(value: Any) -> str | None:
    """A model identity (`Model.identity`) as the user names it, PROVIDER:MODEL (at its base URL, if any)."""
    if not isinstance(value, dict) or not {"provider", "model"} <= value.keys():
        return None
    url = value.get("base_url")
    return f"{value['provider']}:{value['model']}" + (f" at {url}" if url else "")


def _shown(value: Any) -> str:
    """A fingerprint value on one line: a string as it is, a model as PROVIDER:MODEL, anything else as JSON."""
    if value is ABSENT:
        return "(not set)"
    if isinstance(value, str):
        return value
    return _model_spec(value) or json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)


def input_meta(settings: RunSettings, scan: InputScan, before: int) -> dict[str, Any]:
    """The manifest's `input`: the file, its hash, size, lines and records (the first `--limit`), and
    `records_added`: how many of those records were appended to it since the previous invocation (all of them
    on a new run)."""
    added = 0 if before >= scan.lines else scan.records if before == 0 else scan.records_after(before)
    return {"path": settings.io.input, "sha256": scan.sha256, "bytes": scan.bytes, "lines": scan.lines,
            "records": scan.records, "records_added": added}


def build_models(specs: dict[str, str], base_url: str | None,
                 base_urls: dict[str, str | None] | None = None) -> dict[str, Model]:
    """role → model; roles with the same spec (and base URL) share one client (and connection pool). `base_urls`
    gives some roles their own base URL. Each model is checked (e.g. a missing API key) before anything is
    created."""
    shared: dict[tuple[str, str | None], Model] = {}
    models: dict[str, Model] = {}
    for role, spec in specs.items():
        url = (base_urls or {}).get(role, base_url)
        if (spec, url) not in shared:
            shared[(spec, url)] = get_model(spec, url)
        models[role] = shared[(spec, url)]
    for model in shared.values():
        model.check()
    return models


@dataclass
class RunPlugins:
    """The plugins a run's settings turn on: a scorer (`--rbr`) and a labeler (two or more candidates)."""

    scorer: Scorer | None = None
    labeler: Labeler | None = None

    def fingerprint(self) -> dict[str, Any]:
        """Their parts of the resume fingerprint (`rbr`, `labels`), for those that are on."""
        fp = {}
        if self.scorer is not None:
            fp["rbr"] = self.scorer.fingerprint()
        if self.labeler is not None:
            fp["labels"] = self.labeler.fingerprint()
        return fp


def run_models(settings: RunSettings, const: constitution_mod.Constitution,
               base_urls: dict[str, str | None] | None = None) -> tuple[dict[str, Model], RunPlugins]:
    """The run's models by role (the plugins' too, e.g. the grader and the judge) and its plugins; `base_urls`
    gives roles the base URLs they had (e.g. from the fingerprint) instead of the settings' one. A `local_requantize`
    the settings give is set for this process first (the local provider reads it), here and in Ray workers alike."""
    if settings.models.local_requantize is not None:
        set_local_requantize(settings.models.local_requantize)
    specs = settings.models.specs()
    plugins = RunPlugins(
        make_scorer(settings.scoring.scorer, settings, const) if settings.scoring else None,
        make_labeler(settings.labels.labeler, settings, const) if settings.labels else None)
    for plugin in (plugins.scorer, plugins.labeler):
        if plugin is not None:
            specs.update(plugin.models())
    return build_models(specs, settings.models.base_url, base_urls), plugins


@dataclass
class Session:
    """A run folder open for writing: its store (under the run lock), the models by role, and the engine that
    makes their calls as `execution` says."""

    out: Path
    store: Store
    models: dict[str, Model]
    engine: Engine
    execution: ExecutionSettings


@contextlib.asynccontextmanager
async def open_session(out: Path, models: dict[str, Model], execution: ExecutionSettings, *,
                       restart: bool = False, create: bool = True, budget: bool = True) -> AsyncIterator[Session]:
    """The one set-up path of every command that writes a run or a store folder of calls (`cai run`, `cai batch`,
    `cai label`, `cai judge-eval`, `cai rbr`, the library): `locked_store`, and an engine over `models` paced and
    retried as `execution` says, sharing answers through `execution.cache` if given (a bad cache file fails
    before the folder is created), and under `execution.max_cost` a budget (`open_budget`; `budget` False: the
    caller opens it once its settings are final, as `execute` does after `admit`)."""
    cache = CallCache(execution.cache) if execution.cache else None
    try:
        with locked_store(out, restart, create=create) as store:
            engine = Engine(store, models, max_retries=execution.max_retries, concurrency=execution.concurrency,
                            rpm=execution.rpm, tpm=execution.tpm, cache=cache,
                            budget=open_budget(store, execution, models) if budget else None)
            try:
                yield Session(out, store, models, engine, execution)
            finally:
                await engine.aclose()
    finally:
        if cache is not None:
            cache.close()


def role_session(out: Path, role: str, spec: str, base_url: str | None, *, concurrency: int, create: bool = True,
                 **execution: Any) -> contextlib.AbstractAsyncContextManager[Session]:
    """`open_session` over one model in `role` (a grader, a judge), built and checked now: `concurrency` calls
    in flight, or as many as the embedded model has slots (`calls_in_flight`); `execution` holds the other
    `ExecutionSettings` (max_retries, cache)."""
    models = build_models({role: spec}, base_url)
    settings = ExecutionSettings(concurrency=calls_in_flight(models[role].provider, concurrency), **execution)
    if settings.max_cost is not None:  # a model without a price is refused before the folder exists
        role_rates({role: models[role].spec}, load_prices(settings.prices))
    return open_session(out, models, settings, create=create)


class Runner(Protocol):
    """Runs a pipeline's records somewhere other than this event loop (a plugin: `cai.cluster` on Ray). It works
    on `pipeline.todo()`, writes every stored row through `pipeline.store` (the run's one writer), calls
    `pipeline.on_done` as each record ends, keeps `engine.stats` to the counters of every call made for the run
    and returns the counts (done, failed, skipped, waiting)."""

    async def run(self, pipeline: Pipeline, engine: Engine) -> dict[str, int]: ...


async def execute(settings: RunSettings, *, restart: bool = False, command: list[str] | None = None,
                  on_start: Callable[[int, Engine], None] | None = None,
                  on_done: Callable[[str], None] | None = None, on_begin: Callable[[], None] | None = None,
                  on_skip: Callable[[], None] | None = None,
                  manifest_extras: Sequence[ManifestExtra] = (), runner: Runner | None = None) -> dict[str, Any]:
    """Validate everything, run the loop (here, or with `runner`), export; returns the manifest plus
    `this_invocation`.

    Everything a user can get wrong is checked before the run folder is created. `command` is the
    invocation as typed (stored, so `cai status` can print a runnable resume command). No signal handler
    is installed: cancelling the task stops the run (what is committed is kept). `on_start(records, engine)` is
    called once the run is admitted, then the Pipeline's `on_skip`, `on_begin` and `on_done` per record.
    """
    const = constitution_mod.load(settings.loop.constitution)
    scan = await asyncio.to_thread(scan_input, settings.io.input, settings.io.limit)
    models, plugins = run_models(settings, const)
    check_tpm(settings, const)
    if settings.execution.max_cost is not None:  # a model without a price is refused before the folder exists
        role_rates({r: m.spec for r, m in models.items()}, load_prices(settings.execution.prices))
    async with open_session(normalize_out(settings.io.out), models, settings.execution, restart=restart,
                            budget=False) as session:
        store, engine = session.store, session.engine
        if n := store.get_meta(CALLS_IN_FLIGHT, 0):
            raise InputError(f"{n} calls of this run are with a provider batch: `cai batch tick` stores their answers "
                             "(or `cai batch cancel` stops them); running it now would pay for them twice",
                             path=str(store.run_dir))
        settings = await admit(store, settings, models, const, scan, plugins)
        engine.budget = open_budget(store, settings.execution, models)  # the budget the run keeps, if any
        store.begin_invocation([redact(a) for a in command or []], os.getcwd())
        if on_start:
            on_start(scan.records, engine)
        pipeline = Pipeline(settings, const, store, engine, on_done, plugins.scorer, records=scan.records,
                            source=scanned_records(scan), labeler=plugins.labeler, on_begin=on_begin,
                            on_skip=on_skip)
        try:
            counts = await (runner.run(pipeline, engine) if runner is not None else pipeline.run())
        finally:
            store.end_invocation()
        result = await asyncio.to_thread(export_run, store, settings.export.format, extras=manifest_extras)
        result["this_invocation"] = {**counts, "calls": engine.stats.calls,
                                     "tokens_in": engine.stats.tokens_in, "tokens_out": engine.stats.tokens_out,
                                     "cached": engine.stats.total("cached"),
                                     "shared_cache_hits": engine.stats.total("shared"),
                                     "call_cache": engine.cache.report() if engine.cache is not None else None,
                                     "retries": engine.stats.retries, "rate_limited": engine.stats.rate_limited,
                                     "unparsed": engine.stats.unparsed,
                                     "concurrency": engine.concurrency_report()}
        if pipeline.budget_stop is not None or counts.get("stopped"):
            raise budget_stopped(result, scan.records)
        return result


def open_budget(store: Store, execution: ExecutionSettings, models: dict[str, Model], batch: bool = False
                ) -> Budget | None:
    """The budget of this invocation of the folder's writer (None without `--max-cost`): what the folder spent
    so far (its stored calls, each role at its model's price, and the calls a killed invocation left unsettled:
    `Store.settle_lost_holds`), and each role's price (`batch`: the batch price). InputError naming a model
    without a price, or when what was spent cannot be priced."""
    if execution.max_cost is None:
        return None
    prices = load_prices(execution.prices)
    specs = {r: m.spec for r, m in models.items()}
    rates = role_rates(specs, prices, batch)
    # requests in a provider batch hold money that is not lost (and `cai run` refuses to start until a tick)
    lost = store.lost_usd() if store.get_meta(CALLS_IN_FLIGHT, 0) else store.settle_lost_holds()
    spent = run_cost(store, prices, specs)
    if spent is None:
        raise InputError("cannot price what this folder already spent (a model it used has no price): --max-cost "
                         "needs one (give it in a --prices table, see docs/cost.md)", path=str(store.run_dir))
    return Budget(execution.max_cost, spent + lost, rates)


def budget_stopped(manifest: dict[str, Any], records: int) -> BudgetExhausted:
    """The error that ends an invocation the budget stopped, once what is done is exported (`manifest`)."""
    b = manifest.get("budget") or {}
    done = manifest["records"].get("done", 0)
    left = max(records - done - manifest["records"].get("failed", 0), 0)
    e = BudgetExhausted(f"budget reached: ${b.get('spent_usd', 0):.4f} spent of ${b.get('max_cost_usd', 0):.4f} "
                        f"(--max-cost); {done} records done, {left} left, exported",
                        spent=b.get("spent_usd", 0.0), limit=b.get("max_cost_usd", 0.0), left=left)
    e.manifest = manifest  # type: ignore[attr-defined]
    return e


def check_tpm(settings: RunSettings, const: constitution_mod.Constitution) -> None:
    """InputError if `--tpm` is below a request every record makes (the pacer could never send it)."""
    tpm, need = settings.execution.tpm, least_request_tokens(settings, const)
    if tpm is not None and tpm < need:
        raise InputError(f"tpm (--tpm) {tpm} is smaller than one request of this run (~{need} tokens: max_tokens "
                         "and, with rounds, the critic's instructions and worked examples); raise it")


async def admit(store: Store, settings: RunSettings, models: dict[str, Model], const: constitution_mod.Constitution,
                scan: InputScan, plugins: RunPlugins) -> RunSettings:
    """Check this invocation against the run's fingerprint (a new run stores it; the input may have grown)
    and store what the run is: settings, models, base URLs, constitution and input. Returns the settings to run
    with: on a resumed run, what the caller did not give and the run keeps (`RunSettings.resumed`)."""
    settings = settings.resumed(store.get_meta("settings"))
    layers = {x.name: x.sha256 for x in const.layers} if len(const.layers) > 1 else None
    fp = fingerprint(settings, {r: m.identity() for r, m in models.items()}, const.sha256, scan.sha256,
                     plugins.fingerprint(), input_bytes=scan.bytes, input_lines=scan.lines, layers=layers)
    before = await asyncio.to_thread(check_fingerprint, store, fp, settings, scan)
    input_info = input_meta(settings, scan, before)
    store.set_meta("settings", _safe_settings(settings))
    store.set_meta("models", {r: redact(m.spec) for r, m in models.items()})
    store.set_meta("model_files", {r: f for r, m in models.items() if (f := m.model_file()) is not None})
    store.set_meta("base_urls", {r: clean_url(m.base_url or m.default_base_url or "") or None
                                 for r, m in models.items()})
    store.set_meta("constitution", constitution_meta(settings, const))
    store.set_meta("principle_texts", {p.id: [t for t in (p.critique, p.revision, p.statement) if t]
                                       for p in const.principles})  # what the quality gate's `leak` looks for
    store.set_meta("input", input_info)
    return settings


def constitution_meta(settings: RunSettings, const: constitution_mod.Constitution) -> dict[str, Any]:
    """The manifest's `constitution`: the merged name, hash and top file, the layers as given (`specs`), and
    each layer's name, file and hash, bottom first."""
    return {"name": const.name, "sha256": const.sha256, "path": const.path, "specs": settings.loop.layers(),
            "layers": [x.model_dump() for x in const.layers]}


def _safe_settings(settings: RunSettings) -> dict[str, Any]:
    data = settings.model_dump()
    if data["models"]["base_url"]:
        data["models"]["base_url"] = clean_url(data["models"]["base_url"])
    return data
