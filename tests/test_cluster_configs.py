"""The cluster configs load, and the 13B plan fits 8 x 80 GB GPUs by DeepSpeed's own estimator."""

from __future__ import annotations

from glore_ray.config import load_config
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
