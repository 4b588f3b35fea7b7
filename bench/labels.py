"""Step labels on the model organism: cost of exhaustive vs efficient SORM labelling, and the
quality of ORM and SORM labels against the exact checker, in one run on a local Ray cluster; a
second exhaustive labelling with another seed shows the noise floor of agreement between two
labellings. Also the rollout stage's tokens/s against a bare engine in a fresh process (the same
prompts and sampling in one `vllm.LLM.generate` call, as the stage makes per batch), both timed
from a cold start: interpreter or actor, imports, engine.

    .venv/bin/python bench/labels.py [--policy runs/bench-labels/policy] [--questions 120] [--policy-steps 900]

Without a trained policy at --policy, one is trained first with the tiny-cpu settings and
--policy-steps SFT steps (900: ~20% greedy on test; ~14 min here). Labels are compared on the same,
unbalanced rows; `*_bad_labelled_good` is the share of truly bad steps a labelling calls good.
Prints a table and writes bench/results/labels.json.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pyarrow.parquet as pq  # noqa: E402

from bench.results_table import publish  # noqa: E402
from glore_ray.config import GloreConfig, load_config  # noqa: E402
from glore_ray.core.organism import generate  # noqa: E402
from glore_ray.io import write_jsonl  # noqa: E402
from glore_ray.pipeline.registry import labels_stage, rollouts_stage  # noqa: E402
from glore_ray.pipeline.rollouts import rollout_sampling  # noqa: E402


def trained_policy(path: Path, cfg: GloreConfig) -> str:
    from glore_ray.pipeline.data_stage import build_tiny_policy, read_problems, write_split
    from glore_ray.training.local import train_policy_local

    if not (path / "config.json").is_file():
        work = path.parent / "policy-work"
        write_split(cfg.data, "train", str(work / "train.jsonl"))
        init = build_tiny_policy(cfg.model, cfg.policy.seed, str(work / "train.jsonl"), str(work / "init"))
        problems = read_problems(str(work / "train.jsonl"), str(work / "quarantine.jsonl"))
        train_policy_local(cfg.policy, problems, init, str(path))
    return str(path)


SETTINGS = ["data.organism.max_steps=4", "data.organism.max_operand=30", "data.organism.max_factor=12",
            "data.organism.max_result=200", "rollouts.k=8", "policy.batch_size=32"]
"""The organism and rollouts this benchmark has measured since before the demo's smaller default."""


def bare_engine(policy: str, questions: str) -> dict:
    """The rollout stage's engine call without the stage: a fresh process that builds a `vllm.LLM`
    and generates every question's samples and greedy solution in one call, timed from its launch
    to its exit, as the stage is timed from its call to its return (both start cold: interpreter,
    imports, engine)."""
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, __file__, "--bare-engine", policy, questions], check=True,
                          capture_output=True, text=True)
    wall = time.perf_counter() - t0
    return {"bare_engine_wall_s": round(wall, 1), "bare_engine_generated_tokens": int(done.stdout.split()[-1])}


def bare_engine_process(policy: str, questions: str) -> None:
    """`--bare-engine`: print the generated tokens of the stage's sampling on `questions`."""
    from glore_ray.core.problems import load_problems
    from glore_ray.core.prompts import solve_prompt
    from glore_ray.models.engines import VLLMEngine

    cfg = load_config(None, SETTINGS)
    prompts = [solve_prompt(p.question) for p in load_problems(questions)]
    sampling = rollout_sampling(cfg.rollouts, cfg.sampling)
    greedy = replace(sampling, n=1, temperature=0.0)
    generations = VLLMEngine(policy, cfg.engine).generate(prompts * 2, [sampling] * len(prompts) + [greedy] * len(prompts))
    print(sum(c.n_tokens for g in generations for c in g.completions))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--policy", default=str(ROOT / "runs" / "bench-labels" / "policy"))
    parser.add_argument("--questions", type=int, default=120)
    parser.add_argument("--policy-steps", type=int, default=900)
    parser.add_argument("--bare-engine", nargs=2, metavar=("POLICY", "QUESTIONS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bare_engine:
        return bare_engine_process(*args.bare_engine)
    import ray

    cfg = load_config(None, SETTINGS)
    trained_here = not (Path(args.policy) / "config.json").is_file()
    policy = trained_policy(Path(args.policy), replace(cfg, policy=replace(cfg.policy, steps=args.policy_steps)))
    results: dict = {"questions": args.questions, "k_rollouts": cfg.rollouts.k, "k_continuations": cfg.labels.k,
                     "policy": os.path.relpath(args.policy, ROOT)}
    if trained_here:  # a given policy's budget is whatever made it
        results |= {"policy_steps": args.policy_steps, "policy_batch_size": cfg.policy.batch_size}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        last = generate(cfg.data.organism, "train", args.questions, start=cfg.data.organism.n_train - args.questions)
        last = list(last)
        write_jsonl(str(work / "q.jsonl"), (p.to_row() for p in last))
        results |= bare_engine(policy, str(work / "q.jsonl"))
        ray.init(num_cpus=2, include_dashboard=False, _temp_dir=str(work / "ray"))
        t0 = time.perf_counter()
        rollouts = rollouts_stage("rollouts", cfg, str(work / "q.jsonl"), policy).call(str(work / "rollouts"))
        results |= {"rollout_stage_wall_s": round(time.perf_counter() - t0, 1),
                    "rollout_stage_generated_tokens": rollouts["generated_tokens"],
                    "rollout_samples": rollouts["samples"], "rollout_unique": rollouts["unique"],
                    "rollout_correct_unique": rollouts["correct_unique"]}
        orm = labels_stage(cfg, "orm", str(work / "rollouts")).call(str(work / "orm"))
        labels = {}
        for mode, seed in (("exhaustive", cfg.labels.seed), ("efficient", cfg.labels.seed),
                           ("exhaustive_seed2", cfg.labels.seed + 1)):
            mode_cfg = replace(cfg, labels=replace(cfg.labels, mode=mode.removesuffix("_seed2"), balance=False,
                                                   seed=seed))
            t0 = time.perf_counter()
            counts = labels_stage(mode_cfg, "sorm", str(work / "rollouts"), policy).call(str(work / mode))
            results |= {f"{mode}_wall_s": round(time.perf_counter() - t0, 1),
                        f"{mode}_generated_tokens": counts["generated_tokens"],
                        f"{mode}_continuations": counts["continuations"],
                        f"{mode}_prefixes_labelled": counts["prefixes_labelled"],
                        f"sorm_{mode}_step_accuracy": counts["step_accuracy"],
                        f"sorm_{mode}_negative_precision": counts["negative_precision"],
                        f"sorm_{mode}_negative_recall": counts["negative_recall"],
                        f"sorm_{mode}_bad_labelled_good": counts["bad_labelled_good"]}
            labels[mode] = {r["id"]: r["labels"] for r in pq.read_table(work / mode / "data").to_pylist()}
        ray.shutdown()

    def agreement(other: str) -> tuple[int, float]:
        pairs = [(a, labels[other][rid][i]) for rid, row in labels["exhaustive"].items() for i, a in enumerate(row)]
        return len(pairs), round(sum(a == b for a, b in pairs) / len(pairs), 4)

    def tokens_per_s(prefix: str) -> float:
        return results[f"{prefix}_generated_tokens"] / results[f"{prefix}_wall_s"]

    results |= {"orm_step_accuracy": orm["step_accuracy"], "orm_negative_precision": orm["negative_precision"],
                "orm_negative_recall": orm["negative_recall"], "orm_bad_labelled_good": orm["bad_labelled_good"],
                "labelled_steps": agreement("efficient")[0],
                "exhaustive_step_accuracy_vs_exact": results["sorm_exhaustive_step_accuracy"],
                "efficient_step_accuracy_vs_exact": results["sorm_efficient_step_accuracy"],
                "exhaustive_vs_exhaustive_agreement": agreement("exhaustive_seed2")[1],
                "efficient_vs_exhaustive_agreement": agreement("efficient")[1],
                "token_ratio_efficient_vs_exhaustive": round(
                    results["efficient_generated_tokens"] / results["exhaustive_generated_tokens"], 4),
                "rollout_stage_vs_bare_engine": round(tokens_per_s("rollout_stage") / tokens_per_s("bare_engine"), 3)}
    publish("labels", results)


if __name__ == "__main__":
    main()
