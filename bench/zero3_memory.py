"""The ZeRO-3 memory plan of the 13B config's training sections, from DeepSpeed's estimator.

    .venv/bin/python bench/zero3_memory.py

Prints a table and writes bench/results/zero3_memory.json (no GPU needed).
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.results_table import publish  # noqa: E402
from glore_ray.config import load_config  # noqa: E402
from glore_ray.training.memory_plan import LLAMA2_13B, zero3_model_states_gib  # noqa: E402

cfg = load_config(ROOT / "cluster" / "configs" / "llama2-13b-gsm8k.yaml").policy
results = {}
for name, offload in [("no_offload", {}), ("offload_optimizer", {"offload_optimizer": True}),
                      ("offload_optimizer_and_params", {"offload_optimizer": True, "offload_params": True})]:
    plan = zero3_model_states_gib(LLAMA2_13B, replace(cfg, **offload))
    results[f"{name}.gpu_gib"] = round(plan["gpu_gib"], 2)
    results[f"{name}.cpu_gib"] = round(plan["cpu_gib"], 2)
results["gpus"] = cfg.num_workers
results["total_params"] = LLAMA2_13B.total_params
print("LLaMA-2 13B, ZeRO-3, zero.Init, 8 GPUs per node: model states (DeepSpeed estimator)")
publish("zero3_memory", results)
