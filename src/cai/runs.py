"""A run directory: open or create it, refuse foreign folders and changed configurations, then run."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from cai import constitution as constitution_mod
from cai.config import output_defaults, output_settings
from cai.engine import Engine
from cai.errors import ConfigMismatch, InputError, OutputError
from cai.export import ManifestExtra, export_run
from cai.lock import LOCK_NAME, RunLock
from cai.pipeline import ROLES, Pipeline, RunSettings
from cai.providers import Model, get_model
from cai.records import validate_input
from cai.redact import redact
from cai.scoring import make_scorer
from cai.store import Store


def normalize_out(out: str | Path) -> Path:
    """`a/../b` → `b`, so creating the folder leaves no stray `a/`."""
    return Path(os.path.normpath(out))


def prepare_dir(out: Path, restart: bool) -> None:
    """Refuse a folder that holds other files; with `restart`, move an old run aside (never delete) once no
    other process holds it. OutputError naming the folder if it cannot be created."""
    if out.exists() and not out.is_dir():
        raise InputError("--out exists and is not a folder", path=str(out))
    if out.is_dir() and not Store.exists(out):
        if any(p.name != LOCK_NAME for p in out.iterdir()):
            raise InputError("--out is a folder that is not a cai run (no run.sqlite); refusing to write "
                             "into it", path=str(out))
    if restart and Store.exists(out):
        aside = out.with_name(f"{out.name}.old-{time.strftime('%Y%m%d-%H%M%S')}")
        with RunLock(out):  # a live run keeps its folder: RunLocked (exit 3)
            try:
                shutil.move(str(out), str(aside))
            except OSError as e:
                raise OutputError(f"cannot move the old run aside ({e.strerror})", path=str(out)) from e
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"cannot create the run folder ({e.strerror})", path=str(out)) from e


@contextlib.contextmanager
def locked_store(out: Path, restart: bool = False) -> Iterator[Store]:
    """Prepare `out`, hold its run lock for the whole block, and open (or create) its store."""
    if Store.exists(out) and not restart:
        Store.open_run(out, readonly=True).close()  # a damaged or foreign store fails before anything is written
    prepare_dir(out, restart)
    with RunLock(out):
        store = Store.open_run(out) if Store.exists(out) else Store(out)
        try:
            yield store
        finally:
            store.close()


def fingerprint(settings: RunSettings, models: dict[str, Any], const_sha: str, input_sha: str,
                rbr: dict[str, Any] | None = None) -> dict[str, Any]:
    """What must not change between invocations of one run: the models' identities, the constitution's and
    the input's content hashes, and every output-affecting setting (derived from the OUTPUT marks)."""
    fp = {"models": models, "constitution_sha256": const_sha, "input_sha256": input_sha,
          **output_settings(settings)}
    if rbr is not None:
        fp["rbr"] = rbr
    return fp


def check_fingerprint(store: Store, fp: dict[str, Any], settings: RunSettings | None = None) -> None:
    """Store `fp` on a new run; on an existing one, ConfigMismatch naming the first field that differs."""
    old = store.get_meta("fingerprint")
    if old is None:
        store.set_meta("fingerprint", fp)
        return
    keys = [*fp, *(k for k in old if k not in fp)]  # a field present on one side only differs too…
    defaults = output_defaults(type(settings)) if settings is not None else {}
    diff = [k for k in keys if old.get(k) != fp.get(k)
            and not (k not in old and k in defaults and fp.get(k) == defaults[k])]  # …unless added later at its default
    if diff:
        field = diff[0]
        raise ConfigMismatch(f"this run was started with a different {field} "
                             f"({old.get(field)!r} → {fp.get(field)!r}); use the same settings to resume, "
                             "or --restart to start afresh (the old run is moved aside)",
                             path=str(store.run_dir))


async def execute(settings: RunSettings, *, restart: bool = False, command: list[str] | None = None,
                  on_start: Callable[[int, Engine], None] | None = None,
                  on_done: Callable[[str], None] | None = None,
                  manifest_extras: Sequence[ManifestExtra] = ()) -> dict[str, Any]:
    """Validate everything, run the loop, export; returns the manifest plus `this_invocation`.

    Everything a user can get wrong is checked before the run folder is created. `command` is the
    invocation as typed (stored, so `cai status` can print a runnable resume command). No signal handler
    is installed: cancelling the task stops the run (what is committed is kept).
    """
    const = constitution_mod.load(settings.constitution)
    total, input_sha = await asyncio.to_thread(validate_input, settings.input, settings.limit)
    specs = {role: getattr(settings, role) for role in ROLES}
    scorer = make_scorer("rbr", settings, const) if settings.rbr else None  # registered by cai.rbr
    if scorer is not None:
        specs.update(scorer.models())
    shared: dict[str, Model] = {}  # roles with the same spec share one client and connection pool
    for spec in specs.values():
        if spec not in shared:
            shared[spec] = get_model(spec, settings.base_url)
    models = {role: shared[spec] for role, spec in specs.items()}
    for model in shared.values():
        model.check()  # e.g. a missing API key, before any folder is created
    with locked_store(normalize_out(settings.out), restart) as store:
        fp = fingerprint(settings, {r: m.identity() for r, m in models.items()}, const.sha256, input_sha,
                         scorer.fingerprint() if scorer is not None else None)
        check_fingerprint(store, fp, settings)
        store.set_meta("settings", _safe_settings(settings))
        store.set_meta("models", {r: redact(m.spec) for r, m in models.items()})
        store.set_meta("base_urls", {r: redact(m.base_url or m.default_base_url or "") or None
                                     for r, m in models.items()})
        store.set_meta("constitution", {"name": const.name, "sha256": const.sha256, "path": const.path})
        store.set_meta("input", {"path": settings.input, "sha256": input_sha, "records": total})
        store.begin_invocation([redact(a) for a in command or []], os.getcwd())
        engine = Engine(store, models, max_retries=settings.max_retries, concurrency=settings.concurrency,
                        rpm=settings.rpm, tpm=settings.tpm)
        if on_start:
            on_start(total, engine)
        pipeline = Pipeline(settings, const, store, engine, on_done, scorer)
        try:
            counts = await pipeline.run()
        finally:
            store.end_invocation()
            await engine.aclose()
        result = await asyncio.to_thread(export_run, store, settings.format, extras=manifest_extras)
        result["this_invocation"] = {**counts, "calls": engine.stats.calls,
                                     "cached": sum(r.cached for r in engine.stats.roles.values()),
                                     "retries": engine.stats.retries, "rate_limited": engine.stats.rate_limited,
                                     "unparsed": engine.stats.unparsed,
                                     "concurrency": engine.concurrency_report()}
        return result


def _safe_settings(settings: RunSettings) -> dict[str, Any]:
    data = settings.model_dump()
    if data.get("base_url"):
        data["base_url"] = redact(data["base_url"])
    return data
