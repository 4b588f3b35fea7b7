"""The paper-scale recipe's arithmetic: LLaMA-2 13B on GSM8K (cluster/configs/llama2-13b-gsm8k.yaml).

Tokens per stage = the config's sample counts (the paper's: K=96 rollouts per question, 8
continuations per SORM step prefix, 2 expert-iteration rounds, 700 steps of 32 sequences per model)
x per-sample ratios measured on the model organism (bench/results/labels.json: unique rollouts per
sample, SORM continuations per unique rollout) x GSM8K lengths measured on the data files. Time and
cost then rest on the throughput and price assumptions in ASSUMED below: no GPU ran here, so they
are stated, not measured; replace them with your cluster's figures (the dashboard's tokens/s panels).

    python bench/paper_scale.py [--gsm8k ../shared/data/gsm8k]   # -> bench/results/paper_scale.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.results_table import publish  # noqa: E402
from glore_ray.config import load_config  # noqa: E402
from glore_ray.config.ensemble import MODELS  # noqa: E402

ASSUMED = {
    "chars_per_token": 3.5,             # LLaMA's SentencePiece on GSM8K-style English and arithmetic
    "sampled_vs_gold_length": 1.5,      # temperature-1.0 solutions run longer than the gold ones
    "continuation_share": 0.5,          # a SORM continuation finishes on average half a solution
    "vllm_tok_s_per_a100": 2500,        # 13B bf16 generation, many concurrent short sequences
    "train_mfu": 0.40,                  # ZeRO-3 on 8 x A100 80 GB; 8 x params FLOPs/token with recompute
    "train_fixed_hours": 0.5,           # per training stage: loading 26 GB, ZeRO-3 checkpoints (~160 GB each)
    "generation_fixed_hours": 0.25,     # per generation stage: engines loading, the autoscaler adding nodes
    "a100_bf16_flops": 312e12,
    "usd_per_8xa100_node_h": 40.97,     # AWS p4de.24xlarge on demand (GCP a2-ultragpu-8g is similar)
    "spot_discount": 0.6,               # rollout nodes on spot pay ~40% of on demand
}
PARAMS_13B = 13.0e9


def gsm8k_lengths(folder: Path) -> dict:
    rows = [json.loads(line) for line in (folder / "train.jsonl").read_text().splitlines() if line.strip()]
    return {"questions": len(rows),
            "question_tokens": statistics.mean(len(r["question"]) for r in rows) / ASSUMED["chars_per_token"],
            "gold_solution_tokens": statistics.mean(len(r["answer"]) for r in rows) / ASSUMED["chars_per_token"]}


def estimate(gsm8k: dict, organism: dict, cfg) -> dict:
    sol = gsm8k["gold_solution_tokens"] * ASSUMED["sampled_vs_gold_length"]
    seq = gsm8k["question_tokens"] + 20 + sol  # prompt template ~20 tokens
    q = gsm8k["questions"]
    unique_per_sample = organism["rollout_unique"] / organism["rollout_samples"]
    continuations_per_unique = (organism["efficient_continuations"] / organism["rollout_unique"]
                                / organism["k_continuations"])  # per continuation asked

    ei, ro, lab, ev = cfg.expert_iteration, cfg.rollouts, cfg.labels, cfg.eval
    gen = {  # generated tokens per stage
        "expert_iteration": ei.rounds * q * ei.k * sol,
        "rollouts": q * ro.k * sol,
        "sorm_labels": (q * ro.k * unique_per_sample * continuations_per_unique * lab.k
                        * ASSUMED["continuation_share"] * sol),
        "evaluate": ev.n_problems * (1 + ev.k + 2 * 2) * sol,  # draft, k samples, global + local in two passes
    }
    train_steps = {"policy": cfg.policy.steps, "expert_iteration": ei.rounds * ei.steps,
                   **{m: getattr(cfg, m).steps for m in ("orm", "sorm", "global_refiner", "local_refiner")}}
    sequences_per_step = cfg.policy.batch_size  # across all workers
    trained = {name: steps * sequences_per_step * seq for name, steps in train_steps.items()}

    gpus = {stage: ro.pool.replicas * ro.pool.gpus_per_replica for stage in gen}
    gpus["sorm_labels"] = lab.pool.replicas * lab.pool.gpus_per_replica
    gpus["evaluate"] = len(MODELS) * ev.pool.replicas * ev.pool.gpus_per_replica  # a server per model and replica set
    gpus_gen = gpus["rollouts"]
    # 6 FLOPs per parameter and token, plus a forward pass recomputed under activation checkpointing.
    node_train_tok_s = 8 * ASSUMED["a100_bf16_flops"] * ASSUMED["train_mfu"] / (8 * PARAMS_13B)
    out = {"gsm8k_questions": q, "sampled_solution_tokens": round(sol), "training_sequence_tokens": round(seq),
           "generation_gpus": gpus_gen, "train_node_tokens_per_s": round(node_train_tok_s)}
    total_h = total_usd = 0.0
    for stage, tokens in gen.items():
        hours = tokens / (gpus[stage] * ASSUMED["vllm_tok_s_per_a100"]) / 3600 + ASSUMED["generation_fixed_hours"]
        usd = hours * (gpus[stage] / 8) * ASSUMED["usd_per_8xa100_node_h"] * ASSUMED["spot_discount"]
        out |= {f"{stage}_generated_tokens": round(tokens), f"{stage}_hours": round(hours, 2),
                f"{stage}_usd": round(usd)}
        total_h, total_usd = total_h + hours, total_usd + usd
    for stage, tokens in trained.items():
        runs = ei.rounds if stage == "expert_iteration" else 1
        hours = tokens / node_train_tok_s / 3600 + ASSUMED["train_fixed_hours"] * runs
        usd = hours * ASSUMED["usd_per_8xa100_node_h"]
        out |= {f"train_{stage}_tokens": round(tokens), f"train_{stage}_hours": round(hours, 2),
                f"train_{stage}_usd": round(usd)}
        total_h, total_usd = total_h + hours, total_usd + usd
    return out | {"total_hours": round(total_h, 1), "total_usd": round(total_usd)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gsm8k", default=str(REPO.parent / "shared" / "data" / "gsm8k"))
    args = parser.parse_args()
    organism = json.loads((REPO / "bench" / "results" / "labels.json").read_text())
    result = estimate(gsm8k_lengths(Path(args.gsm8k)), organism,
                      load_config(REPO / "cluster" / "configs" / "llama2-13b-gsm8k.yaml"))
    publish("paper_scale", result | {f"assumed_{k}": v for k, v in ASSUMED.items()})


if __name__ == "__main__":
    main()
