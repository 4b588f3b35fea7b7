"""The policy stage's training throughput against a bare single-process loop with the same threads,
batch and rows, in one run: where the Ray Train stage's time goes.

    .venv/bin/python bench/policy_stage.py [--steps 150] [--rows 20000]

The stage runs as the pipeline runs it (one Ray Train worker with `policy.cpus_per_worker` CPUs and
`policy.torch_threads` threads, rows streamed from the data stage's JSONL through Ray Data), then
with the rows as Parquet, then with every row replayed from memory after the first batch window;
the bare loop tokenizes its rows as it goes, like the worker. The last variant starts Ray as
`glore pipeline` does (dashboard and metrics agent on). Tokens are all non-pad tokens, as the
trainer counts them; each figure is the last logging window (warm). Prints a table and writes
bench/results/policy_stage.json.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import torch  # noqa: E402

from bench.results_table import publish  # noqa: E402
from glore_ray.config import GloreConfig, TrainConfig  # noqa: E402
from glore_ray.core.organism import generate  # noqa: E402
from glore_ray.core.prompts import solve_prompt  # noqa: E402
from glore_ray.io import write_jsonl  # noqa: E402
from glore_ray.models.encoding import collate  # noqa: E402
from glore_ray.models.tiny import build_model, load_model_folder, save_model_folder, train_tokenizer  # noqa: E402
from glore_ray.training.loop import train_steps  # noqa: E402
from glore_ray.training.objectives import (
    encode_row,  # noqa: E402
    objective,  # noqa: E402
)
from glore_ray.training.ray_train import fit  # noqa: E402
from glore_ray.training.strategy import TorchStrategy  # noqa: E402


def bare_tokens_per_s(model_dir: str, rows: list[dict], cfg: TrainConfig) -> float:
    torch.set_num_threads(cfg.torch_threads)
    model, tokenizer = load_model_folder(model_dir)

    def batches():
        while True:
            for start in range(0, len(rows) - cfg.batch_size + 1, cfg.batch_size):
                yield collate([encode_row("policy", tokenizer, r, cfg.max_length)
                               for r in rows[start:start + cfg.batch_size]], tokenizer.pad_token_id)

    logs = []
    train_steps(model, batches(), cfg, objective("policy").loss, TorchStrategy(model, cfg).step, logs.append)
    return logs[-1].tokens_per_s


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--rows", type=int, default=20000)
    args = parser.parse_args()
    import ray

    base = GloreConfig().policy
    cfg = replace(base, steps=args.steps, log_every=args.steps // 3, checkpoint_every=10**6, max_failures=0)
    results: dict = {"steps": args.steps, "batch_size": cfg.batch_size, "torch_threads": cfg.torch_threads,
                     "cpus_per_worker": cfg.cpus_per_worker, "rows": args.rows}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        problems = list(generate(GloreConfig().data.organism, "train", args.rows))
        tokenizer = train_tokenizer((solve_prompt(p.question) + p.solution() for p in problems[:2000]), 512)
        model_dir = str(save_model_folder(build_model(GloreConfig().model, tokenizer), tokenizer, work / "init"))
        rows = [{"id": p.id, "question": p.question, "solution": p.solution()} for p in problems]
        write_jsonl(str(work / "sft.jsonl"), rows)
        pq.write_table(pa.Table.from_pylist(rows), work / "sft.parquet")

        t0 = time.perf_counter()
        bare = bare_tokens_per_s(model_dir, rows, cfg)
        results["bare_wall_s"] = round(time.perf_counter() - t0, 1)
        variants = {"stage_jsonl": (cfg, "sft.jsonl"),
                    "stage_parquet": (cfg, "sft.parquet"),
                    "stage_replayed": (replace(cfg, replay_rows=args.rows), "sft.parquet"),
                    # As `glore pipeline` starts a local cluster: plain ray.init(), dashboard and metrics on.
                    "stage_jsonl_dashboard": (cfg, "sft.jsonl")}
        for name, (run_cfg, data) in variants.items():
            ray.init(num_cpus=2, include_dashboard=name.endswith("dashboard"), _temp_dir=str(work / "ray"))
            t0 = time.perf_counter()
            meta = fit("policy", run_cfg, str(work / data), model_dir, str(work / name), name)
            results[f"{name}_tokens_per_s"] = round(meta["tokens_per_s"], 1)
            results[f"{name}_wall_s_with_startup"] = round(time.perf_counter() - t0, 1)
            ray.shutdown()

    results["bare_tokens_per_s"] = round(bare, 1)
    for name in variants:
        results[f"ratio_{name}_vs_bare"] = round(results[f"{name}_tokens_per_s"] / bare, 3)
    publish("policy_stage", results)


if __name__ == "__main__":
    main()
