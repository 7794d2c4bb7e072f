"""Scale-out on Ray (the `ray` extra): `RayRunner` runs a run's pipeline on worker actors, the driver staying the
run's one writer. `cai run --engine ray` and `cai.run(..., engine="ray")` use it through its `cai.plugins` entry
point `runner.ray` (`ray_runner`). See docs/ray.md."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cai.cluster.driver import RayRunner
    from cai.settings import ExecutionSettings

__all__ = ["RayRunner", "connect", "ray_runner"]


def ray_runner(execution: ExecutionSettings) -> RayRunner:
    """The `runner.ray` plugin: a `RayRunner` for `--ray-address` and `--workers` (imports Ray)."""
    from cai.cluster.driver import RayRunner

    return RayRunner(execution.ray_address, execution.workers)


def __getattr__(name: str) -> Any:
    """`RayRunner` and `connect` import Ray: only on first use."""
    if name in ("RayRunner", "connect"):
        from cai.cluster import driver

        return getattr(driver, name)
    raise AttributeError(f"module 'cai.cluster' has no attribute {name!r}")
