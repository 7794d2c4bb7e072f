"""The plugin registry: every provider, scorer, labeler, runner, manifest section, exporter and extra command comes
from the `cai.plugins` entry-point group, built-ins included, exactly as a third-party package's would.

An entry point is named `KIND.NAME` and points at the object that kind expects (docs/architecture.md):

    [project.entry-points."cai.plugins"]
    "provider.openai" = "cai.providers.openai_api:OpenAIModel"    # a cai.providers.Model subclass
    "scorer.rbr" = "cai.rbr:rbr_scorer"                            # (RunSettings, Constitution) -> Scorer
    "labeler.ai" = "cai.labels:ai_labeler"                         # (RunSettings, Constitution) -> Labeler
    "runner.ray" = "cai.cluster:ray_runner"                        # (ExecutionSettings) -> Runner
    "manifest.refusal" = "cai.rbr.metrics:refusal_metrics_extra"   # (Store, counts) -> dict for manifest.json
    "exporter.hf" = "cai.read.hf:write_hf"             # (run_dir, dest, *, developer_as_system) -> {"rows": {...}, ...}
    "command.NAME" = "your_package:app"           # a typer.Typer (`cai NAME ...`) or a function (`cai NAME`)

Nothing is imported until it is asked for (`load`), so `import cai` and `cai --help` stay light.
"""

from __future__ import annotations

import functools
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from cai.errors import InputError

GROUP = "cai.plugins"
KINDS = ("provider", "scorer", "labeler", "runner", "manifest", "exporter", "command")


@functools.cache
def _entry_points() -> dict[str, dict[str, EntryPoint]]:
    """{kind: {name: entry point}} of every installed distribution; a later duplicate name replaces one."""
    found: dict[str, dict[str, EntryPoint]] = {kind: {} for kind in KINDS}
    for ep in entry_points(group=GROUP):
        kind, _, name = ep.name.partition(".")
        if kind in found and name:
            found[kind][name] = ep
    return found


def names(kind: str) -> list[str]:
    """The names registered for `kind`, sorted."""
    return sorted(_entry_points()[kind])


def load(kind: str, name: str) -> Any:
    """The object registered as `KIND.NAME`, imported now; InputError naming the known ones if there is none.
    An ImportError from the plugin's own imports (a missing optional dependency) propagates to the caller."""
    ep = _entry_points()[kind].get(name)
    if ep is None:
        known = ", ".join(names(kind)) or "none"
        raise InputError(f"no {kind} named {name!r} is installed (known: {known}; a plugin registers one under "
                         f"the {GROUP!r} entry points as '{kind}.NAME')")
    return ep.load()


def load_all(kind: str) -> list[Any]:
    """Every object registered for `kind`, in name order."""
    return [load(kind, name) for name in names(kind)]


def refresh() -> None:
    """Forget the entry points read so far (after installing a plugin in a running process)."""
    _entry_points.cache_clear()
