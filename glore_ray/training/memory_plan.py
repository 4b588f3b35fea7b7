"""ZeRO-3 memory plan for a training section, from DeepSpeed's own estimator.

Model states only (parameters, gradients, optimizer states); activations come on top, which is
why the large configs turn activation checkpointing on and keep headroom.
"""

from __future__ import annotations

from dataclasses import dataclass

from glore_ray.config import TrainConfig

GIB = 2**30


@dataclass(frozen=True)
class ModelSize:
    total_params: int
    largest_layer_params: int


# LLaMA-2 13B: 40 layers, hidden 5120, vocabulary 32000; the largest layer is the embedding.
LLAMA2_13B = ModelSize(total_params=13_015_864_320, largest_layer_params=32_000 * 5_120)


def zero3_model_states_gib(size: ModelSize, cfg: TrainConfig, gpus_per_node: int = 8) -> dict[str, float]:
    """Per-GPU and per-node-CPU memory of model states for `cfg`'s offload settings, in GiB."""
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs

    num_nodes = max(1, cfg.num_workers // gpus_per_node)
    cpu, gpu, largest = estimate_zero3_model_states_mem_needs(
        size.total_params, size.largest_layer_params, num_gpus_per_node=gpus_per_node, num_nodes=num_nodes,
        cpu_offload=cfg.offload_optimizer, cpu_offload_params=cfg.offload_params, zero_init=True)
    return {"gpu_gib": gpu / GIB, "cpu_gib": cpu / GIB, "largest_layer_gib": largest / GIB}
