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
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any
from unittest.mock import patch

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.results_table import publish  # noqa: E402
from bench.local_cluster import free_port  # noqa: E402
from glore_ray.config import GloreConfig, TrainConfig, load_config  # noqa: E402
from glore_ray.core.organism import generate  # noqa: E402
from glore_ray.io import parquet_rows, write_jsonl  # noqa: E402

ENGINE_NODES = 3
"""Nodes of the stage's type: two for the pool's replicas or the run's workers, one spare that a
lost one restarts on."""
SETTINGS = ["engine.backend=hf", "sampling.max_tokens=48", "rollouts.k=2", "rollouts.pool.replicas=2",
            "rollouts.pool.batch_size=2", "rollouts.pool.cpus_per_replica=0.5",
            "rollouts.pool.resources={engine_node: 1}"]
"""The transformers engine (vLLM's start would dominate a small run); one replica per engine node."""


def simulated_cluster(node_type: str):
    """A head (the driver, Ray Data's reads and writes, Ray Train's controller; marked `head_node`)
    and ENGINE_NODES nodes of `node_type` (a custom resource, as the cluster files mark their node
    types), connected."""
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "resources": {"head_node": 100}})
    for _ in range(ENGINE_NODES):
        cluster.add_node(num_cpus=1, resources={node_type: 1})
    cluster.wait_for_nodes()
    ray.init(address=cluster.address)
    return cluster


def remove_the_node_of(cluster, actor_class: str) -> str:
    """Remove a worker node that holds a live actor of `actor_class` (a Ray Data replica, a Ray
    Train worker, a Serve replica) as a lost machine goes: its raylet and every process it started
    at once (a worker outlives its raylet by seconds, and calls to its actors go to it directly).
    Return the node's id."""
    import psutil
    from ray._private.ray_constants import PROCESS_TYPE_RAYLET
    from ray.util.state import list_actors

    nodes = [a.node_id for a in list_actors(filters=[("state", "=", "ALIVE")], limit=1000) if actor_class in a.class_name]
    node = next(n for n in cluster.worker_nodes if n.node_id in nodes)
    raylet = node.all_processes[PROCESS_TYPE_RAYLET][0].process.pid
    started = psutil.Process(raylet).children(recursive=True)
    cluster.remove_node(node, allow_graceful=False)
    for process in started:
        try:
            process.kill()
        except psutil.NoSuchProcess:  # gone with its raylet already
            pass
    return node.node_id


def run_with_fault(work: Callable[[], Any], reached: Callable[[], bool], fault: Callable[[], Any] | None) -> dict:
    """Run `work` (a stage) on a thread; once `reached()` holds, call `fault` (None: the twin run
    without it) and note the moment. Returns the stage's result or error, its wall time, and the time
    from that moment to its end."""
    outcome: dict = {"result": None, "error": None}

    def stage() -> None:
        try:
            outcome["result"] = work()
        except Exception as e:  # the scenario reports it; the caller decides
            outcome["error"] = e

    t0 = time.perf_counter()
    runner = threading.Thread(target=stage)
    runner.start()
    moment = None
    while runner.is_alive() and moment is None:
        time.sleep(0.2)
        if reached():
            if fault is not None:
                fault()
            moment = time.perf_counter()
    runner.join()
    end = time.perf_counter()
    return outcome | {"wall_s": round(end - t0, 1),
                      "moment_to_end_s": round(end - moment, 1) if moment is not None else None}


def rollouts_node_loss(model: str, work: Path, questions: int, lose_node: bool) -> dict:
    """The rollout stage on a fresh simulated cluster, with or without losing a replica's node once
    a quarter of the questions are done. Returns its counts and times, and what the files hold."""
    import ray

    from glore_ray.pipeline.progress import counters_name
    from glore_ray.pipeline.stages import run_rollouts

    cfg = load_config(None, SETTINGS + [f"rollouts.max_questions={questions}"])
    problems = list(generate(cfg.data.organism, "train", questions))
    write_jsonl(str(work / "questions.jsonl"), (p.to_row() for p in problems))
    out = work / "rollouts"
    cluster = simulated_cluster("engine_node")

    def a_quarter_done() -> bool:  # the fault's moment, or its twin's
        try:
            done = ray.get(ray.get_actor(counters_name(str(out))).snapshot.remote())[0].get("questions", 0)
        except ValueError:  # the counters actor is not up yet, or already gone
            return False
        return done >= questions // 4

    try:
        run = run_with_fault(lambda: run_rollouts(cfg, "rollouts", str(work / "questions.jsonl"), model, str(out)),
                             a_quarter_done, (lambda: remove_the_node_of(cluster, "MapWorker")) if lose_node else None)
    finally:
        ray.shutdown()
        cluster.shutdown()
    written = Counter(row["id"] for row in parquet_rows(str(out / "data"), ["id"])) if (out / "data").exists() else Counter()
    return {"wall_s": run["wall_s"], "quarter_to_end_s": run["moment_to_end_s"], "counts": run["result"],
            "error": run["error"],
            "rows_lost": len({p.id for p in problems} - set(written)),
            "rows_duplicated": sum(n - 1 for n in written.values())}


TRAINING = TrainConfig(steps=16, batch_size=16, lr=1e-3, warmup_steps=1, log_every=4, checkpoint_every=3,
                       strategy="zero2", num_workers=2, cpus_per_worker=0.5, torch_threads=1, max_failures=1,
                       resources={"train_node": 1})
"""The policy's SFT on two train nodes, a checkpoint every 3 of 16 steps."""


def training_node_loss(model: str, sft_rows: str, work: Path, lose_node: bool) -> dict:
    """The policy's Ray Train run on a fresh simulated cluster, with or without losing a worker's
    node once the controller has registered a checkpoint. Returns the run's summary, its times, and
    whether the exported model loads."""
    import ray

    from glore_ray.training.ray_train import fit

    out = work / "policy"
    storage = Path(f"{out}.ray_train") / "faults"
    cluster = simulated_cluster("train_node")

    def a_checkpoint_registered() -> bool:  # the fault's moment, or its twin's
        # Registered once the controller's snapshot names it; one only on storage is not restored.
        return (storage / "checkpoint_manager_snapshot.json").exists()

    try:
        run = run_with_fault(lambda: fit("policy", TRAINING, sft_rows, model, str(out), "faults"),
                             a_checkpoint_registered,
                             (lambda: remove_the_node_of(cluster, "RayTrainWorker")) if lose_node else None)
    finally:
        ray.shutdown()
        cluster.shutdown()
    loads = False
    if run["result"] is not None:
        from transformers import AutoModelForCausalLM

        loads = AutoModelForCausalLM.from_pretrained(out) is not None
    return {"wall_s": run["wall_s"], "checkpoint_to_end_s": run["moment_to_end_s"], "summary": run["result"],
            "error": run["error"], "model_loads": loads}


def serve_node_loss(run_dir: str, overrides: list[str], port: int, question: str) -> dict:
    """The Serve app of `run_dir`'s models on a fresh simulated cluster, the policy's replica on a
    serve node; while one client keeps asking `question`, that node is removed. Returns the answer
    before, every status (and model named by each 503) after the loss, the last answer, and how long
    the replica took to answer again."""
    import urllib.error
    import urllib.request

    import ray
    from ray import serve

    from glore_ray.layout import model_dirs
    from glore_ray.serve.app import APP_NAME, build_app

    # The policy alone on a serve node; the ingress and the other models on the head.
    others = [f"serve.{d}.resources={{head_node: 1}}" for d in ("ingress", "global_refiner", "local_refiner", "orm", "sorm")]
    cfg = load_config(None, overrides + [f"serve.port={port}", "serve.model_timeout_s=3",
                                         "serve.policy.resources={serve_node: 1}", *others])

    def solve() -> tuple[int, dict]:
        request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/solve", method="POST",
                                         data=json.dumps({"question": question}).encode(),
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=60) as response:  # a hang fails here
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null")

    cluster = simulated_cluster("serve_node")
    try:
        # One HTTP proxy, on the head: every simulated node shares this machine's ports.
        serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app(cfg, model_dirs(cfg, run_dir)), name=APP_NAME, route_prefix="/")
        status, before = solve()
        assert status == 200, (status, before)
        t0 = time.perf_counter()
        solve()
        request_s = time.perf_counter() - t0  # a warm request without the fault
        remove_the_node_of(cluster, f"ServeReplica:{APP_NAME}:policy")
        lost_at, after = time.perf_counter(), []
        while time.perf_counter() - lost_at < 180:
            status, answer = solve()
            after.append((status, answer.get("model") if status == 503 else None))
            if status == 200:
                break
            time.sleep(0.5)
        recovered_s = time.perf_counter() - lost_at
        serve.shutdown()
    finally:
        ray.shutdown()
        cluster.shutdown()
    return {"before": before, "after": after, "last": answer if status == 200 else None,
            "recovered_s": round(recovered_s, 1), "request_s": round(request_s, 2)}


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

    from bench.local_cluster import autoscaling_head
    from glore_ray.capacity import AUTOSCALER_CONFIG_ENV
    from glore_ray.pipeline.stages import run_rollouts

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
            run = run_with_fault(lambda: run_rollouts(cfg, "rollouts", str(work / "questions.jsonl"), model,
                                                      str(work / "a100")),
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
                run_rollouts(load_config(None, settings + ['rollouts.pool.resources={"accelerator_type:H100": 1}']),
                             "rollouts", str(work / "questions.jsonl"), model, str(work / "h100"))
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


def tiny_policy(cfg: GloreConfig, work: Path) -> tuple[str, str]:
    """An untrained tiny policy and its SFT rows: the fault's cost, not the model, is measured."""
    from glore_ray.pipeline.data_stage import build_tiny_policy, write_sft_rows, write_split

    write_split(cfg, "train", str(work / "train.jsonl"))
    write_sft_rows(str(work / "train.jsonl"), str(work / "sft.jsonl"))
    return build_tiny_policy(cfg, str(work / "train.jsonl"), str(work / "policy")), str(work / "sft.jsonl")


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
