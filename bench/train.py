"""Per-worker training throughput: Ray Train + DeepSpeed ZeRO-2 (2 CPU workers) against a bare
single-process torch loop, on the same tiny policy and the same rows, in one run.

    .venv/bin/python bench/train.py [--steps 60]

Prints a table and writes bench/results/train.json. Each Ray worker gets one core and one thread;
the bare loop runs with one thread too and tokenizes its rows as it goes, like the workers, so the
ratio is the per-worker overhead (Ray Data streaming, gloo all-reduce, DeepSpeed's step), not a
core-count or workload difference.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import torch  # noqa: E402

from bench.results_table import publish  # noqa: E402
from glore_ray.config import GloreConfig, TrainConfig  # noqa: E402
from glore_ray.core.organism import generate  # noqa: E402
from glore_ray.core.prompts import solve_prompt  # noqa: E402
from glore_ray.models.encoding import collate  # noqa: E402
from glore_ray.models.tiny import build_model, load_model_folder, save_model_folder, train_tokenizer  # noqa: E402
from glore_ray.testing.training_rows import rows  # noqa: E402
from glore_ray.training.loop import train_steps  # noqa: E402
from glore_ray.training.objectives import (
    encode_row,  # noqa: E402
    objective,  # noqa: E402
)
from glore_ray.training.ray_train import fit  # noqa: E402
from glore_ray.training.strategy import TorchStrategy  # noqa: E402


def bare_tokens_per_s(model_dir: str, data: list[dict], cfg: TrainConfig) -> float:
    torch.set_num_threads(1)
    model, tokenizer = load_model_folder(model_dir)

    def batches():  # tokenized as it goes, as the Ray workers do: the same work per step
        while True:
            size = cfg.batch_size_per_worker
            for start in range(0, len(data) - size + 1, size):
                chunk = data[start:start + size]
                yield collate([encode_row("policy", tokenizer, r, cfg.max_length) for r in chunk],
                              tokenizer.pad_token_id)

    logs = []
    train_steps(model, batches(), cfg, objective("policy").loss, TorchStrategy(model, cfg).step, logs.append)
    return logs[-1].tokens_per_s  # the last window: warm


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=60)
    args = parser.parse_args()
    import ray

    cfg = TrainConfig(steps=args.steps, batch_size=64, warmup_steps=1, log_every=args.steps // 3,
                      checkpoint_every=10**6, num_workers=2, cpus_per_worker=0.5, max_failures=0)
    results: dict = {"steps": args.steps, "batch_size_per_worker": cfg.batch_size_per_worker, "workers": cfg.num_workers}
    with tempfile.TemporaryDirectory() as tmp:
        problems = list(generate(GloreConfig().data.organism, "train", 2000))
        tokenizer = train_tokenizer((solve_prompt(p.question) + p.solution() for p in problems), 512)
        model_dir = str(save_model_folder(build_model(GloreConfig().model, tokenizer), tokenizer, Path(tmp) / "init"))
        data = rows("policy", 2000)
        pq.write_table(pa.Table.from_pylist(data), Path(tmp) / "rows.parquet")

        t0 = time.perf_counter()
        bare = bare_tokens_per_s(model_dir, data, cfg)
        results["bare_wall_s"] = round(time.perf_counter() - t0, 1)
        # Two bare loops at once: what sharing the machine's 2 cores and memory costs, without Ray.
        with multiprocessing.get_context("spawn").Pool(2) as pool:
            pair = pool.starmap(bare_tokens_per_s, [(model_dir, data, cfg)] * 2)
        ray.init(num_cpus=2, include_dashboard=False, _temp_dir=str(Path(tmp) / "ray"))
        per_worker = {}
        for name, run_cfg in [("ray_zero2", replace(cfg, strategy="zero2")),
                              ("ray_ddp", replace(cfg, strategy="ddp")),
                              ("ray_zero2_1_worker", replace(cfg, strategy="zero2", num_workers=1, batch_size=32))]:
            t0 = time.perf_counter()
            meta = fit("policy", run_cfg, str(Path(tmp) / "rows.parquet"), model_dir, str(Path(tmp) / name), name)
            per_worker[name] = meta["tokens_per_s"]
            results[f"{name}_wall_s_with_startup"] = round(time.perf_counter() - t0, 1)
        ray.shutdown()

    results |= {
        "bare_tokens_per_s": round(bare, 1),
        "bare_2_processes_tokens_per_s_each": round(sum(pair) / 2, 1),
        **{f"{name}_tokens_per_s_per_worker": round(value, 1) for name, value in per_worker.items()},
        "ratio_ray_deepspeed_vs_bare": round(per_worker["ray_zero2"] / bare, 3),
        "ratio_ray_deepspeed_vs_2_bare_processes": round(per_worker["ray_zero2"] / (sum(pair) / 2), 3),
        "ratio_ray_ddp_vs_bare": round(per_worker["ray_ddp"] / bare, 3),
        "ratio_ray_deepspeed_1_worker_vs_bare": round(per_worker["ray_zero2_1_worker"] / bare, 3),
    }
    publish("train", results)


if __name__ == "__main__":
    main()
