"""Faults on a multi-node cluster simulated on this machine (`ray.cluster_utils.Cluster`: a head and
engine nodes, each a real raylet with its own resources), and autoscaling from zero: the scenarios
`tests/test_faults.py` asserts on and `bench/faults.py` times side by side with the same stage
without the fault (its docstring describes each)."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from glore_ray.config import GloreConfig, TrainConfig, load_config
from glore_ray.core.organism import generate
from glore_ray.io import parquet_rows, write_jsonl

ROOT = Path(__file__).resolve().parents[2]
"""The checkout: the autoscaling scenario reads its cluster files."""
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
    from glore_ray.pipeline.registry import rollouts_stage

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
        run = run_with_fault(lambda: rollouts_stage("rollouts", cfg, str(work / "questions.jsonl"), model).call(str(out)),
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

    from glore_ray.layout import RunLayout
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
        serve.run(build_app(cfg, RunLayout(run_dir).model_dirs(cfg)), name=APP_NAME, route_prefix="/")
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


def tiny_policy(cfg: GloreConfig, work: Path) -> tuple[str, str]:
    """An untrained tiny policy and its SFT rows: the fault's cost, not the model, is measured."""
    from glore_ray.pipeline.data_stage import build_tiny_policy, write_sft_rows, write_split

    write_split(cfg.data, "train", str(work / "train.jsonl"))
    write_sft_rows(str(work / "train.jsonl"), str(work / "sft.jsonl"))
    return build_tiny_policy(cfg.model, cfg.policy.seed, str(work / "train.jsonl"), str(work / "policy")), str(work / "sft.jsonl")
