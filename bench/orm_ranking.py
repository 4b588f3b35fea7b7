"""Can the ORM rank a question's solutions? Its within-question AUROC on the VALIDATION split against
the policy's own likelihood, for one ORM training budget (issue 14: the reranker is the hard link).

    .venv/bin/python bench/orm_ranking.py --policy runs/policy-regime/900x64 \
        --samples runs/policy-regime/900x64-samples/samples.jsonl [--questions 2000] [--steps 500]

The ORM is trained as the pipeline trains it (rollouts with the greedy solution, ORM rows with the
answer line, Ray Train, rows shuffled every epoch) on the first `--questions` training questions,
then scores the validation samples `bench/policy_regime.py` wrote for the same policy (greedy and
k = 8 at T = 1, graded by the exact checker). Beside it: the policy's mean token log-probability of
each solution, and a logistic combination of the two fitted on the training rollouts (does the ORM
add anything to the likelihood?). The test split is never read. Prints a table and
writes bench/results/orm_ranking.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pyarrow.parquet as pq  # noqa: E402

from bench.policy_regime import token_logprobs  # noqa: E402
from bench.results_table import publish  # noqa: E402
from glore_ray.config import GloreConfig  # noqa: E402
from glore_ray.core.grading import scored_steps  # noqa: E402
from glore_ray.core.organism import generate  # noqa: E402
from glore_ray.core.stats import within_question_auroc  # noqa: E402
from glore_ray.io import write_jsonl  # noqa: E402
from glore_ray.models.scorers import HFStepScorer, fit_logistic, logit  # noqa: E402
from glore_ray.pipeline.registry import labels_stage, rollouts_stage  # noqa: E402
from glore_ray.training.ray_train import fit  # noqa: E402


def solution_features(orm_dir: str, policy_dir: str, rows: list[tuple]) -> list[tuple[float, float]]:
    """(ORM logit at the answer line, the policy's mean token log-probability) of each solution."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    values = HFStepScorer(orm_dir).score([q for _, q, _, _ in rows], [scored_steps(text) for _, _, text, _ in rows])
    tokenizer = AutoTokenizer.from_pretrained(policy_dir)
    policy = AutoModelForCausalLM.from_pretrained(policy_dir).eval()
    out = []
    for (_, question, text, _), v in zip(rows, values, strict=True):
        lp = token_logprobs(policy, tokenizer, question, text)
        out.append((logit(v[-1] if v else 0.5), sum(lp) / len(lp)))
    return out


def grouped(rows: list[tuple], scores: list[float]) -> list[list[tuple[float, bool]]]:
    groups: dict[str, list[tuple[float, bool]]] = {}
    for (pid, _, _, ok), score in zip(rows, scores, strict=True):
        groups.setdefault(pid, []).append((score, ok))
    return list(groups.values())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--policy", required=True)
    parser.add_argument("--samples", required=True, help="validation samples.jsonl of bench/policy_regime.py")
    parser.add_argument("--questions", type=int, default=2000)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    args = parser.parse_args()
    import ray

    base = GloreConfig()
    cfg = replace(base, rollouts=replace(base.rollouts, k=args.k, max_questions=args.questions),
                  orm=replace(base.orm, steps=args.steps, batch_size=args.batch, lr=args.lr, warmup_steps=20,
                              log_every=100, checkpoint_every=10**6))
    results: dict = {"split": "validation", "train_questions": args.questions, "k": args.k, "orm_steps": args.steps,
                     "orm_batch_size": args.batch, "orm_lr": args.lr}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        write_jsonl(str(work / "q.jsonl"), (p.to_row() for p in generate(base.data.organism, "train", args.questions)))
        ray.init(num_cpus=2, include_dashboard=False, _temp_dir=str(work / "ray"))
        t0 = time.perf_counter()
        rollouts = rollouts_stage("rollouts", cfg, str(work / "q.jsonl"), args.policy).call(str(work / "rollouts"))
        results |= {"rollouts_s": round(time.perf_counter() - t0, 1), "rollout_unique": rollouts["unique"],
                    "rollout_correct_unique": rollouts["correct_unique"]}
        orm_rows = labels_stage(cfg, "orm", str(work / "rollouts")).call(str(work / "orm"))
        t0 = time.perf_counter()
        meta = fit("orm", cfg.orm, str(work / "orm" / "data"), args.policy, str(work / "model"), "orm-ranking")
        results |= {"orm_rows": orm_rows["rows"], "orm_train_s": round(time.perf_counter() - t0, 1),
                    "orm_final_loss": round(meta["loss"], 4)}
        ray.shutdown()

        samples = [json.loads(line) for line in Path(args.samples).read_text().splitlines()]
        questions = {p.id: p.question for p in generate(base.data.organism, "validation")}
        distinct: dict[str, dict[str, bool]] = {}
        for s in samples:
            distinct.setdefault(s["problem_id"], {})[s["text"]] = s["correct"]
        validation = [(pid, questions[pid], text, ok) for pid, texts in distinct.items() for text, ok in texts.items()]
        train_questions = {p.id: p.question for p in generate(base.data.organism, "train", args.questions)}
        training = [(row["id"], train_questions[row["id"]], r["text"], r["correct"])
                    for row in pq.read_table(work / "rollouts" / "data").to_pylist() for r in row["rollouts"]]
        features = {name: solution_features(str(work / "model"), args.policy, rows)
                    for name, rows in (("train", training), ("validation", validation))}
    weights = fit_logistic(features["train"], [ok for *_, ok in training])
    for name, column in (("orm", 0), ("policy_logprob_mean", 1)):
        results[f"{name}_within_question_auroc"] = round(
            within_question_auroc(grouped(validation, [f[column] for f in features["validation"]]))[0], 4)
    combined = [sum(w * x for w, x in zip(weights, [*f, 1.0])) for f in features["validation"]]
    results["orm_plus_logprob_within_question_auroc"] = round(within_question_auroc(grouped(validation, combined))[0], 4)
    results["orm_plus_logprob_weights"] = [round(w, 4) for w in weights]
    results["validation_solutions"] = len(validation)
    publish("orm_ranking", results)


if __name__ == "__main__":
    main()
