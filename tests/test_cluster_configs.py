"""The cluster configs load, the 13B plan fits 8 x 80 GB GPUs by DeepSpeed's own estimator, and the
Serve config file and the KubeRay RayService pass Serve's schema and match the config's deployments."""

from __future__ import annotations

import importlib

from glore_ray.config import SERVED_MODELS, load_config
from glore_ray.memory_plan import LLAMA2_13B, zero3_model_states_gib
from glore_ray.objectives import OBJECTIVES
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

    from glore_ray.serve_app import app_builder

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
    assert app.import_path == "glore_ray.serve_app:app_builder"
    cfg = load_config(REPO / app.args["config"].removeprefix("/home/ray/glore-ray/"))
    cluster = spec["rayClusterConfig"]
    assert cluster["enableInTreeAutoscaling"] and cluster["headGroupSpec"]["template"]["spec"]["containers"]
    gpu_group = next(g for g in cluster["workerGroupSpecs"] if g["groupName"] == "gpu-serve")
    limits = gpu_group["template"]["spec"]["containers"][0]["resources"]["limits"]
    served = [getattr(cfg.serve, m) for m in SERVED_MODELS]
    assert all(0 < d.gpus <= int(limits["nvidia.com/gpu"]) for d in served)
    assert gpu_group["minReplicas"] == sum(d.min_replicas for d in served)
    assert gpu_group["maxReplicas"] == sum(d.max_replicas for d in served)
    # The token comes from a Kubernetes secret into the env var the config names.
    env = {e["name"]: e for e in gpu_group["template"]["spec"]["containers"][0]["env"]}
    assert "secretKeyRef" in env[cfg.serve.token_env]["valueFrom"]


def test_the_app_builder_rejects_unknown_arguments() -> None:
    import pytest

    from glore_ray.serve_app import app_builder

    with pytest.raises(ValueError, match=r"need `models`.*got \['config', 'model'\]"):
        app_builder({"config": "cluster/configs/tiny-cpu.yaml", "model": "runs/demo"})
