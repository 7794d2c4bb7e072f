"""Scale-out on Ray (the `ray` extra): `RayRunner` runs a run's pipeline on worker actors, the driver staying the
run's one writer. `cai run --engine ray` and `cai.run(..., engine="ray")` use it. See docs/ray.md."""

from cai.cluster.driver import RayRunner, connect

__all__ = ["RayRunner", "connect"]
