"""Autoscaling from zero on this machine: a head with no worker node and the real autoscaler over
the AWS cluster file's node types scaled down; `tests/test_faults.py` asserts on it and
`bench/faults.py` times it."""

from __future__ import annotations

import os
import time
from pathlib import Path
from unittest.mock import patch

from glore_ray.config import load_config
from glore_ray.core.organism import generate
from glore_ray.io import write_jsonl
from glore_ray.testing.faults import ROOT, run_with_fault

ACCELERATOR = "accelerator_type:A100-80G"
"""What the autoscaling scenario's stage asks for; aws.yaml's A100 node types advertise it."""


def scaled_node_types() -> dict:
    """cluster/ray-up/aws.yaml's worker node types at this machine's scale: a CPU each and no GPU,
    their accelerator markers kept (to Ray, custom resources), every group at min_workers 0, one node."""
    import yaml

    config = yaml.safe_load((ROOT / "cluster" / "ray-up" / "aws.yaml").read_text())
    return {name: {"resources": {"CPU": 1} | {k: v for k, v in spec["resources"].items() if k not in ("CPU", "GPU")},
                   "node_config": {}, "min_workers": 0, "max_workers": 1}
            for name, spec in config["available_node_types"].items() if name != config["head_node_type"]}


def autoscaling_from_zero(model: str, work: Path, questions: int, idle_timeout_s: float = 5) -> dict:
    """A head with no worker node and the real autoscaler (v2) over `scaled_node_types`: the rollout
    stage with one replica asking for the A100 marker, then the node's idle end; then the same stage
    asking for an H100, which no node type has. Returns the times, the counts, the node types the
    replica ran on and the second stage's error."""
    import ray
    from ray.util.state import list_actors

    from glore_ray.capacity import AUTOSCALER_CONFIG_ENV
    from glore_ray.pipeline.registry import rollouts_stage
    from glore_ray.testing.local_cluster import autoscaling_head

    settings = ["engine.backend=hf", "sampling.max_tokens=32", "rollouts.k=2", "rollouts.pool.replicas=1",
                "rollouts.pool.batch_size=4", "rollouts.pool.cpus_per_replica=0.5"]
    cfg = load_config(None, settings + [f'rollouts.pool.resources={{"{ACCELERATOR}": 1}}'])
    write_jsonl(str(work / "questions.jsonl"), (p.to_row() for p in generate(cfg.data.organism, "train", questions)))
    node_types = scaled_node_types()

    def accelerator_nodes() -> list[dict]:
        return [n for n in ray.nodes() if n["Alive"] and ACCELERATOR in n["Resources"]]

    with (autoscaling_head(work, node_types, idle_timeout_s=idle_timeout_s) as address,
          patch.dict(os.environ, {AUTOSCALER_CONFIG_ENV: str(work / "autoscaler.yaml")})):
        ray.init(address=address)
        try:
            nodes_before = len(accelerator_nodes())
            run = run_with_fault(lambda: rollouts_stage("rollouts", cfg, str(work / "questions.jsonl"), model)
                                 .call(str(work / "a100")),
                                 lambda: bool(accelerator_nodes()), None)
            ended = time.perf_counter()
            ran_on = {a.node_id for a in list_actors(limit=1000) if "MapWorker" in a.class_name}
            # The resources the replicas' nodes advertised (Ray's own node:, memory entries left out).
            replica_nodes = [{k: v for k, v in n["Resources"].items() if k == "CPU" or k.startswith("accelerator_type")}
                             for n in ray.nodes() if n["NodeID"] in ran_on]
            while accelerator_nodes() and time.perf_counter() - ended < 120:
                time.sleep(0.5)
            idle_end_s = time.perf_counter() - ended if not accelerator_nodes() else None
            t0 = time.perf_counter()
            try:
                h100 = load_config(None, settings + ['rollouts.pool.resources={"accelerator_type:H100": 1}'])
                rollouts_stage("rollouts", h100, str(work / "questions.jsonl"), model).call(str(work / "h100"))
                unsatisfiable = None
            except Exception as e:  # the scenario reports it; the caller checks what it is
                unsatisfiable = e
            unsatisfiable_s = time.perf_counter() - t0
        finally:
            ray.shutdown()
    return {"error": run["error"], "counts": run["result"], "node_types": node_types,
            "accelerator_nodes_before": nodes_before, "replica_nodes": replica_nodes,
            "stage_wall_s": run["wall_s"],
            "node_up_s": round(run["wall_s"] - run["moment_to_end_s"], 1) if run["moment_to_end_s"] is not None else None,
            "idle_end_s": round(idle_end_s, 1) if idle_end_s is not None else None, "idle_timeout_s": idle_timeout_s,
            "unsatisfiable": unsatisfiable, "unsatisfiable_s": round(unsatisfiable_s, 1)}
