"""The cluster configs load, the 13B plan fits 8 x 80 GB GPUs by DeepSpeed's own estimator, and the
Serve config file and the KubeRay RayService pass Serve's schema and match the config's deployments."""

from __future__ import annotations

import importlib

from glore_ray.capacity import fits, node_types_of, request
from glore_ray.config import load_config
from glore_ray.config.ensemble import MODELS
from glore_ray.training.memory_plan import LLAMA2_13B, zero3_model_states_gib
from glore_ray.training.objectives import OBJECTIVES
from tests.conftest import REPO

CONFIG = REPO / "cluster" / "configs" / "llama2-13b-gsm8k.yaml"


def test_13b_training_sections_use_zero3_bf16_and_checkpointing() -> None:
    cfg = load_config(CONFIG)
    for objective in OBJECTIVES:
        section = cfg.training(objective)
        assert (section.strategy, section.bf16, section.activation_checkpointing) == ("zero3", True, True)
        assert section.num_workers == 8 and section.gpus_per_worker == 1


def test_13b_model_states_leave_room_for_activations_on_80gb_gpus() -> None:
    plan = zero3_model_states_gib(LLAMA2_13B, load_config(CONFIG).policy)
    # DeepSpeed: 18 bytes/param over 8 GPUs plus the largest layer, ~27.9 GiB.
    assert 25 < plan["gpu_gib"] < 0.5 * 80


def _serve_schema(config: dict):
    from ray.serve.schema import ServeDeploySchema

    return ServeDeploySchema.model_validate(config)


def test_the_serve_config_file_passes_serves_schema_and_names_the_app_builder() -> None:
    import yaml

    from glore_ray.serve.app import app_builder

    schema = _serve_schema(yaml.safe_load((REPO / "cluster" / "serve" / "glore.yaml").read_text()))
    assert schema.http_options.host == "127.0.0.1"  # loopback unless configured otherwise
    (app,) = schema.applications
    module, _, name = app.import_path.partition(":")
    assert getattr(importlib.import_module(module), name) is app_builder
    assert load_config(REPO / app.args["config"]) == load_config(None)


def test_the_rayservice_runs_the_same_app_with_a_gpu_per_model_replica() -> None:
    import yaml

    manifest = yaml.safe_load((REPO / "cluster" / "kuberay" / "rayservice.yaml").read_text())
    assert (manifest["apiVersion"], manifest["kind"]) == ("ray.io/v1", "RayService")
    spec = manifest["spec"]
    (app,) = _serve_schema(yaml.safe_load(spec["serveConfigV2"])).applications
    assert app.import_path == "glore_ray.serve.app:app_builder"
    cfg = load_config(REPO / app.args["config"].removeprefix("/home/ray/glore-ray/"))
    cluster = spec["rayClusterConfig"]
    assert cluster["enableInTreeAutoscaling"] and cluster["headGroupSpec"]["template"]["spec"]["containers"]
    gpu_group = next(g for g in cluster["workerGroupSpecs"] if g["groupName"] == "gpu-serve")
    limits = gpu_group["template"]["spec"]["containers"][0]["resources"]["limits"]
    served = [getattr(cfg.serve, m) for m in MODELS]
    assert all(0 < d.gpus <= int(limits["nvidia.com/gpu"]) for d in served)
    assert gpu_group["minReplicas"] == sum(d.min_replicas for d in served)
    assert gpu_group["maxReplicas"] == sum(d.max_replicas for d in served)
    # The token comes from a Kubernetes secret into the env var the config names.
    env = {e["name"]: e for e in gpu_group["template"]["spec"]["containers"][0]["env"]}
    assert "secretKeyRef" in env[cfg.serve.token_env]["valueFrom"]


def test_the_app_builder_rejects_unknown_arguments() -> None:
    import pytest

    from glore_ray.serve.app import app_builder

    with pytest.raises(ValueError, match=r"need `models`.*got \['config', 'model'\]"):
        app_builder({"config": "cluster/configs/tiny-cpu.yaml", "model": "runs/demo"})


# ---- clusters: ray-up YAMLs, KubeRay manifests, and what the 13B stages ask of them ------------

RAY_UP = [REPO / "cluster" / "ray-up" / f"{cloud}.yaml" for cloud in ("aws", "gcp")]
KUBERAY = REPO / "cluster" / "kuberay"


def _yaml(path):
    import yaml

    return yaml.safe_load(path.read_text())


def test_the_ray_up_yamls_pass_the_autoscalers_own_schema() -> None:
    import jsonschema
    import pytest
    from ray.autoscaler._private.util import prepare_config, validate_config

    for path in RAY_UP:
        config = _yaml(path)
        validate_config(prepare_config(config))  # what `ray up` runs before it launches anything
        assert config["docker"]["image"].endswith("glore-ray:0.1.0") and config["idle_timeout_minutes"] > 0
        types = config["available_node_types"]
        assert types[config["head_node_type"]]["resources"] == {"CPU": 0}
        assert any(t.get("node_config", {}).get("InstanceMarketOptions") or
                   t.get("node_config", {}).get("scheduling", {}).get("provisioningModel") == "SPOT"
                   for t in types.values()), f"{path.name}: no spot node type"
        # The validator bites: a misspelt node-type field fails.
        broken = _yaml(path)
        broken["available_node_types"]["gpu_a100"]["max_worker"] = 1
        with pytest.raises(jsonschema.ValidationError, match="max_worker"):
            validate_config(prepare_config(broken))


def _kuberay_groups(cluster_spec: dict) -> dict[str, tuple[dict, int]]:
    """Worker groups as Ray sees them: (resources per pod, maxReplicas); rayStartParams override
    the container limits, as KubeRay does."""
    import json

    groups = {}
    for group in cluster_spec["workerGroupSpecs"]:
        limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
        params = group["rayStartParams"]
        resources = {"CPU": float(params.get("num-cpus", limits["cpu"])),
                     "GPU": float(params.get("num-gpus", limits.get("nvidia.com/gpu", 0)))}
        resources |= json.loads(json.loads(params["resources"])) if "resources" in params else {}
        groups[group["groupName"]] = (resources, group["maxReplicas"])
    return groups


def test_the_kuberay_manifests_have_the_fields_kuberay_requires() -> None:
    cluster = _yaml(KUBERAY / "raycluster.yaml")
    assert (cluster["apiVersion"], cluster["kind"]) == ("ray.io/v1", "RayCluster")
    spec = cluster["spec"]
    assert spec["enableInTreeAutoscaling"] is True and spec["autoscalerOptions"]["idleTimeoutSeconds"] > 0
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
        (container,) = group["template"]["spec"]["containers"]
        assert container["image"].endswith("glore-ray:0.1.0") and container["resources"]["limits"]
    for group in spec["workerGroupSpecs"]:
        assert group["groupName"] and 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]

    job = _yaml(KUBERAY / "rayjob.yaml")
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    assert job["spec"]["clusterSelector"] == {"ray.io/cluster": cluster["metadata"]["name"]}
    entry = job["spec"]["entrypoint"].split()
    assert "jobs/pipeline.py" in entry and (REPO / entry[entry.index("--config") + 1]).is_file()
    import yaml

    runtime_env = yaml.safe_load(job["spec"]["runtimeEnvYAML"])
    assert runtime_env["env_vars"] == _yaml(REPO / "cluster" / "runtime_env.yaml")["env_vars"]


def _stage_requests(cfg) -> dict[str, tuple[dict, int]]:
    """What each pipeline stage asks Ray for: (one bundle's resources, how many bundles at once)."""
    requests = {}
    for name in ("rollouts", "labels"):
        pool = getattr(cfg, name).pool
        requests[name] = (request(pool.cpus_per_replica, pool.gpus_per_replica, pool.accelerator_type), pool.replicas)
    pool = cfg.eval.pool
    requests["evaluate"] = (request(pool.cpus_per_replica, pool.gpus_per_replica, pool.accelerator_type),
                            len(MODELS) * pool.replicas)
    for objective in OBJECTIVES:
        t = cfg.training(objective)
        requests[f"train {objective}"] = (request(t.cpus_per_worker, t.gpus_per_worker, t.accelerator_type),
                                          t.num_workers)
    return requests


def _serve_requests(cfg) -> dict[str, tuple[dict, int]]:
    deployments = {name: getattr(cfg.serve, name) for name in (*MODELS, "ingress")}
    return {f"serve {name}": (request(d.cpus, d.gpus, d.accelerator_type), d.max_replicas)
            for name, d in deployments.items()}


def _unplaceable(requests: dict, node_types: dict[str, tuple[dict, int]]) -> list[str]:
    """Requests no node type can hold, or that need more bundles than the cluster can grow to:
    such a stage would wait for resources forever."""
    problems = []
    for stage, (want, count) in requests.items():
        capacity = 0
        for resources, max_nodes in node_types.values():
            if fits(want, resources):
                capacity += max_nodes * int(min(resources[k] / v for k, v in want.items() if v > 0))
        if capacity < count:
            problems.append(f"{stage}: {count} x {want}, room for {capacity}")
    return problems


def test_every_resource_a_13b_stage_asks_for_exists_in_some_node_type() -> None:
    cfg = load_config(CONFIG)
    pipeline, served = _stage_requests(cfg), _serve_requests(cfg)
    for path in RAY_UP:
        config = _yaml(path)
        types = {t.name: (t.resources, t.max_workers) for t in node_types_of(config)}
        assert not _unplaceable(pipeline | served, types), path.name
    cluster = _kuberay_groups(_yaml(KUBERAY / "raycluster.yaml")["spec"])
    assert not _unplaceable(pipeline, cluster)
    service = _kuberay_groups(_yaml(KUBERAY / "rayservice.yaml")["spec"]["rayClusterConfig"])
    assert not _unplaceable(served, service)
    # The check bites: a GPU type no node has, or more engines than the GPU nodes hold.
    assert _unplaceable({"rollouts": ({"CPU": 4, "GPU": 1, "accelerator_type:H100": 0.001}, 1)}, cluster)
    assert _unplaceable({"rollouts": ({"CPU": 4, "GPU": 1}, 100)}, cluster)


def test_every_cluster_file_runs_the_same_image() -> None:
    """One image, built from cluster/Dockerfile and pushed where docs/cluster.md says: a manifest
    naming another would pull an image nobody built."""
    import re

    images = {m for path in REPO.joinpath("cluster").rglob("*.yaml")
              for m in re.findall(r"^\s*image:\s*\"?([^\s\"]+)", path.read_text(), re.M)}
    assert images == {"YOUR-REGISTRY/glore-ray:0.1.0"}
