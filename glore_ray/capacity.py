"""Whether a cluster can ever hold one replica or worker of a stage: a node alive now, or a node type
the autoscaler may start. Ray queues a request that nothing can satisfy forever (the autoscaler
only logs it as infeasible), and a stage waiting forever looks like one that works; `require`
turns that into an error naming the request, the nodes and the node types, before the stage starts.

The node types come from the cluster config the autoscaler publishes in the GCS where it does, else
from the autoscaler's config file: `ray up` leaves it on the head as ~/ray_bootstrap_config.yaml,
where `ray job submit` runs the driver; GLORE_AUTOSCALER_CONFIG names another path. Where neither
exists the node types are unknown, and a request no live node holds waits as Ray makes it wait."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

log = logging.getLogger(__name__)

AUTOSCALER_CONFIG_ENV = "GLORE_AUTOSCALER_CONFIG"
DEFAULT_AUTOSCALER_CONFIG = "~/ray_bootstrap_config.yaml"
ACCELERATOR_PREFIX = "accelerator_type:"
ACCELERATOR_AMOUNT = 0.001
"""What Ray asks of a node's `accelerator_type:<type>` resource for an `accelerator_type` option."""


class Unsatisfiable(RuntimeError):
    """No node of the cluster, alive or startable, holds a stage's request."""


@dataclass(frozen=True)
class NodeType:
    name: str
    resources: dict[str, float]
    max_workers: int


def request(cpus: float, gpus: float = 0.0, accelerator_type: str = "",
            resources: dict[str, float] | None = None) -> dict[str, float]:
    """One replica's or worker's request as Ray's resources."""
    return ({"CPU": cpus} if cpus else {}) | ({"GPU": gpus} if gpus else {}) | (
        {ACCELERATOR_PREFIX + accelerator_type: ACCELERATOR_AMOUNT} if accelerator_type else {}) | dict(resources or {})


def fits(wanted: dict[str, float], resources: dict[str, float]) -> bool:
    return all(resources.get(name, 0.0) >= amount for name, amount in wanted.items())


def node_types_of(config: dict) -> list[NodeType]:
    """The node types of an autoscaler config (`available_node_types`), the head's included."""
    types = config.get("available_node_types") or {}
    head = config.get("head_node_type")
    return [NodeType(name, {k: float(v) for k, v in (spec.get("resources") or {}).items()},
                     1 if name == head else int(spec.get("max_workers", config.get("max_workers", 0))))
            for name, spec in types.items()]


def describe(resources: dict[str, float]) -> str:
    def amount(name: str, value: float) -> str:
        return f"{value / 2**30:.1f} GiB" if name in ("memory", "object_store_memory") else f"{value:g}"

    return "{" + ", ".join(f"{k}: {amount(k, v)}" for k, v in sorted(resources.items())) + "}"


def check(what: str, wanted: dict[str, float], nodes: list[dict[str, float]],
          node_types: list[NodeType] | None) -> str:
    """'alive' when a live node holds `wanted`, 'startable' when a node type the autoscaler may start
    does, 'unknown' when no live node does and the node types are unknown; else Unsatisfiable."""
    if any(fits(wanted, node) for node in nodes):
        return "alive"
    if node_types is None:
        return "unknown"
    if any(t.max_workers > 0 and fits(wanted, t.resources) for t in node_types):
        return "startable"
    raise Unsatisfiable(
        f"{what} asks for {describe(wanted)} per replica or worker, and no node can hold it: "
        f"not the {len(nodes)} alive ({'; '.join(describe(n) for n in nodes) or 'none'}), nor a node type the "
        f"autoscaler may start ({'; '.join(f'{t.name} {describe(t.resources)} x{t.max_workers}' for t in node_types)})."
        f" Lower {what}'s request, or add a node type with these resources to the cluster config.")


def published_node_types() -> list[NodeType] | None:
    """The node groups of the cluster config in the GCS (written by platforms that publish one)."""
    import ray._private.state

    config = ray._private.state.state.get_cluster_config()
    if config is None or not config.node_group_configs:
        return None
    return [NodeType(g.name, {k: float(v) for k, v in g.resources.items()}, g.max_count if g.max_count >= 0 else 10**9)
            for g in config.node_group_configs]


def file_node_types(path: str) -> list[NodeType] | None:
    import yaml

    path = os.path.expanduser(path)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return node_types_of(yaml.safe_load(f) or {})


def require(what: str, wanted: dict[str, float]) -> None:
    """Fail, before the stage asks Ray for it, when no node of the connected cluster can ever hold
    `wanted` (`what` names the config section it comes from); say so when a node must start first."""
    import ray
    from ray._private.auto_init_hook import auto_init_ray

    auto_init_ray()  # as the Ray Data, Train or Serve call this check precedes would
    # Less each node's `node:<ip>` marker: Ray's own, and noise in the error.
    nodes = [{k: float(v) for k, v in n["Resources"].items() if not k.startswith("node:")}
             for n in ray.nodes() if n["Alive"]]
    path = os.environ.get(AUTOSCALER_CONFIG_ENV, DEFAULT_AUTOSCALER_CONFIG)
    node_types = published_node_types() or file_node_types(path)
    state = check(what, wanted, nodes, node_types)
    if state == "startable":
        log.info(f"{what}: no node alive holds {describe(wanted)}; the autoscaler starts one")
    elif state == "unknown":
        log.warning(f"{what}: no node alive holds {describe(wanted)}, and the node types the autoscaler may start are "
                    f"unknown (no cluster config in the GCS, none at {path}; {AUTOSCALER_CONFIG_ENV} names one): "
                    "waiting for one as Ray does (`ray status` shows the demand)")
