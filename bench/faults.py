"""Faults on a multi-node cluster simulated on this machine (`ray.cluster_utils.Cluster`: a head and
engine nodes, each a real raylet with its own resources), against the same stage without the
fault, side by side in one run.

- `rollouts_node_loss`: the rollout stage with a pool of two replicas, one per engine node (the
  pool asks for the nodes' `engine_node` resource), and a third engine node spare; once a quarter
  of the questions are done, the node of one replica is removed. The stage must finish on what is
  left, every question written exactly once.
- `training_node_loss`: a two-worker Ray Train run (DeepSpeed ZeRO-2) with one worker per train node
  and a third train node spare; once the controller has registered a checkpoint, the node of one
  worker is removed. The run must resume from its last checkpoint on what is left and end at exactly `steps`.
- `serve_node_loss`: the Serve app with the policy's replica on a serve node, removed while one
  client keeps asking; 503s naming the policy until the replica is back, then the same answer.
- `autoscaling_from_zero` (not a fault): a head with no worker node and the
  real autoscaler over aws.yaml's node types scaled to this machine; a stage asking for an A100
  gets a node started for it, which ends once idle, and a stage asking for an H100 (no node type)
  fails at once.

    .venv/bin/python bench/faults.py [--questions 96]

Prints a table and writes bench/results/faults.json: for each fault, the stage's wall time with and
without it, the time from the fault to the stage's end against the time from the same point (a
quarter of the questions done) to the end without it, and the rows lost and duplicated (counted
from the written files, not from the stage's own checks). tests/test_faults.py runs the same
scenario, smaller, and asserts its counts.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.results_table import publish  # noqa: E402
from glore_ray.config import load_config  # noqa: E402
from glore_ray.testing.autoscaling import ACCELERATOR, autoscaling_from_zero  # noqa: E402
from glore_ray.testing.faults import (  # noqa: E402
    ENGINE_NODES,
    TRAINING,
    rollouts_node_loss,
    serve_node_loss,
    tiny_policy,
    training_node_loss,
)
from glore_ray.testing.local_cluster import free_port  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--questions", type=int, default=96)
    parser.add_argument("--serve-run", default=str(ROOT / "runs" / "demo-validation-final"),
                        help="a finished run (the embedded default's config) whose models Serve runs")
    args = parser.parse_args()
    if not (Path(args.serve_run) / "data" / "test.jsonl").is_file():
        raise SystemExit(f"--serve-run {args.serve_run}: no finished run there (make demo writes one)")
    results: dict = {"questions": args.questions, "nodes_of_the_stages_type": ENGINE_NODES, "pool_replicas": 2,
                     "train_workers": TRAINING.num_workers, "train_steps": TRAINING.steps}
    with tempfile.TemporaryDirectory() as tmp:
        model, sft_rows = tiny_policy(load_config(None, ["data.organism.n_train=2000"]), Path(tmp))
        for name, lose in (("no_fault", False), ("node_loss", True)):
            run = rollouts_node_loss(model, Path(tmp) / f"rollouts_{name}", args.questions, lose)
            if run["error"]:
                raise run["error"]
            results |= {f"rollouts_{name}_wall_s": run["wall_s"],
                        f"rollouts_{name}_quarter_to_end_s": run["quarter_to_end_s"],
                        f"rollouts_{name}_replica_starts": run["counts"]["replica_starts"],
                        f"rollouts_{name}_rows_lost": run["rows_lost"],
                        f"rollouts_{name}_rows_duplicated": run["rows_duplicated"]}
        for name, lose in (("no_fault", False), ("node_loss", True)):
            run = training_node_loss(model, sft_rows, Path(tmp) / f"training_{name}", lose)
            if run["error"]:
                raise run["error"]
            results |= {f"training_{name}_wall_s": run["wall_s"],
                        f"training_{name}_checkpoint_to_end_s": run["checkpoint_to_end_s"],
                        f"training_{name}_steps": run["summary"]["step"],
                        f"training_{name}_resumed_from": run["summary"]["resumed_from"],
                        f"training_{name}_model_loads": run["model_loads"]}
        run = autoscaling_from_zero(model, Path(tmp) / "autoscaling", 24)
        if run["error"]:
            raise run["error"]
        results |= {"autoscale_accelerator_nodes_before": run["accelerator_nodes_before"],
                    "autoscale_stage_wall_s": run["stage_wall_s"], "autoscale_node_up_s": run["node_up_s"],
                    "autoscale_replica_on_accelerator_node": all(ACCELERATOR in n for n in run["replica_nodes"]),
                    "autoscale_idle_timeout_s": run["idle_timeout_s"], "autoscale_idle_end_s": run["idle_end_s"],
                    "autoscale_unsatisfiable_error": type(run["unsatisfiable"]).__name__,
                    "autoscale_unsatisfiable_s": run["unsatisfiable_s"]}
    question = json.loads((Path(args.serve_run) / "data" / "test.jsonl").read_text().splitlines()[0])["question"]
    run = serve_node_loss(args.serve_run, [], free_port(), question)
    statuses = [status for status, _ in run["after"]]
    results |= {"serve_run": os.path.relpath(args.serve_run, ROOT), "serve_request_no_fault_s": run["request_s"],
                "serve_node_loss_to_answer_s": run["recovered_s"], "serve_503s": statuses.count(503),
                "serve_503s_naming_the_policy": sum(m == "policy" for s, m in run["after"] if s == 503),
                "serve_other_errors": sum(s not in (200, 503) for s in statuses),
                "serve_same_answer_after": run["last"] == run["before"]}
    results |= {"rows_lost": results["rollouts_node_loss_rows_lost"],
                "rows_duplicated": results["rollouts_node_loss_rows_duplicated"],
                "rollouts_fault_to_end_vs_no_fault": round(
                    results["rollouts_node_loss_quarter_to_end_s"] / results["rollouts_no_fault_quarter_to_end_s"], 3),
                "rollouts_node_loss_vs_no_fault_wall": round(
                    results["rollouts_node_loss_wall_s"] / results["rollouts_no_fault_wall_s"], 3),
                "training_fault_to_end_vs_no_fault": round(
                    results["training_node_loss_checkpoint_to_end_s"]
                    / results["training_no_fault_checkpoint_to_end_s"], 3),
                "training_node_loss_vs_no_fault_wall": round(
                    results["training_node_loss_wall_s"] / results["training_no_fault_wall_s"], 3)}
    publish("faults", results)


if __name__ == "__main__":
    main()
