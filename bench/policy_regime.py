"""Where the policy sits on the organism's VALIDATION split for a training budget: the regime GLoRe
needs (greedy 45-60%, per-sample >= 35%, pass@8 >= 85%, errors mostly slips), measured per budget.

    .venv/bin/python bench/policy_regime.py [--budget 900x64 --budget 1500x32 ...] [--problems 300]
        [--set data.organism.max_steps=5 --tag max_steps_5]

Each budget (steps x batch) trains the tiny policy from the same initial model in one process (the
pipeline's loop and objective, two threads), then samples greedily and k = 8 times at T = 1 on the
first `--problems` validation problems (vLLM) and grades every sample with the exact checker.
It also ranks each question's solutions by the policy's own likelihood of them (sum, mean and
minimum token log-probability): the within-question AUROC a reranker with no training at all
reaches, the yardstick for the ORM (issue 14: reranking is the hard link). The test split is
never read. Prints a table and writes bench/results/policy_regime.json (or `--name`'s file;
flat keys `<steps>x<batch>_<metric>`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.results_table import publish  # noqa: E402
from glore_ray.config import load_config  # noqa: E402
from glore_ray.core.stats import within_question_auroc  # noqa: E402
from glore_ray.pipeline.data_stage import build_tiny_policy, read_problems, write_split  # noqa: E402
from glore_ray.pipeline.policy_eval import evaluate_policy  # noqa: E402
from glore_ray.training.local import train_policy_local  # noqa: E402

SLIPS = ("arithmetic",)
"""The checker's error kinds that are slips (a wrong result, then a consistent continuation);
the others (wrong_plan, unknown_operand, ...) are plan errors a question can set as traps."""


def token_logprobs(model, tokenizer, question: str, text: str) -> list[float]:
    """The policy's log-probability of each token of a solution (and its EOS) given the question."""
    import torch

    from glore_ray.core.prompts import solve_prompt

    prompt = tokenizer(solve_prompt(question))["input_ids"]
    target = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    ids = torch.tensor([prompt + target])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)
    return logprobs[len(prompt) - 1:].gather(1, ids[0, len(prompt):, None])[:, 0].tolist()


def likelihood_rankings(model_dir: str, problems: dict, samples: list[dict]) -> dict:
    """Within-question AUROC of the policy's sum, mean and min token log-probability of each
    distinct solution (greedy and sampled)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer, model = AutoTokenizer.from_pretrained(model_dir), AutoModelForCausalLM.from_pretrained(model_dir).eval()
    scored: dict[str, dict[str, tuple[list[float], bool]]] = {}
    for s in samples:
        per_problem = scored.setdefault(s["problem_id"], {})
        if s["text"] not in per_problem:
            per_problem[s["text"]] = (token_logprobs(model, tokenizer, problems[s["problem_id"]], s["text"]),
                                      s["correct"])
    out = {}
    for name, reduce in (("sum", sum), ("mean", lambda v: sum(v) / len(v)), ("min", min)):
        groups = [[(reduce(lp), ok) for lp, ok in per_problem.values()] for per_problem in scored.values()]
        auroc, _ = within_question_auroc(groups)
        out[f"policy_logprob_{name}_within_question_auroc"] = None if auroc is None else round(auroc, 4)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--budget", action="append", default=[], help="STEPSxBATCH (repeatable; default 900x64)")
    parser.add_argument("--problems", type=int, default=300)
    parser.add_argument("--name", default="policy_regime", help="results file: bench/results/<name>.json")
    parser.add_argument("--work", default=str(ROOT / "runs" / "policy-regime"))
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="organism or model settings to try, e.g. data.organism.max_steps=5 (repeatable)")
    parser.add_argument("--tag", default="", help="prefix of this invocation's keys, e.g. max_steps_5")
    args = parser.parse_args()
    budgets = [tuple(int(x) for x in b.split("x")) for b in args.budget or ["900x64"]]
    base = load_config(None, args.overrides)
    cfg = replace(base, eval=replace(base.eval, k=8, n_problems=args.problems, split="validation"))
    work = Path(args.work)
    write_split(cfg.data, "train", str(work / "train.jsonl"))
    write_split(cfg.data, "validation", str(work / "validation.jsonl"))
    init = build_tiny_policy(cfg.model, cfg.policy.seed, str(work / "train.jsonl"), str(work / "init"))
    results: dict = {"split": "validation", "problems": args.problems, "k": 8}
    if args.overrides:
        results[f"{args.tag}_settings"] = ", ".join(args.overrides)
    for steps, batch in budgets:
        name = f"{args.tag}_{steps}x{batch}" if args.tag else f"{steps}x{batch}"
        run_cfg = replace(cfg, policy=replace(cfg.policy, steps=steps, batch_size=batch, log_every=100))
        t0 = time.perf_counter()
        problems = read_problems(str(work / "train.jsonl"), str(work / "quarantine.jsonl"))
        model = train_policy_local(run_cfg.policy, problems, init, str(work / name))
        train_s = time.perf_counter() - t0
        summary = evaluate_policy(run_cfg, str(work / "validation.jsonl"), model, str(work / f"{name}-samples"))
        errors = {k.split(".", 1)[1]: v for k, v in summary.items() if k.startswith("sampled_errors.")}
        samples = [json.loads(line) for line in (work / f"{name}-samples" / "samples.jsonl").read_text().splitlines()]
        questions = {p["id"]: p["question"] for p in map(json.loads, (work / "validation.jsonl").read_text().splitlines())}
        rankings = likelihood_rankings(model, questions, samples)
        results |= {f"{name}_train_s": round(train_s, 1),
                    f"{name}_greedy_accuracy": round(summary["greedy_accuracy"], 4),
                    f"{name}_sample_accuracy": round(summary["sample_accuracy"], 4),
                    f"{name}_pass_at_8": round(summary["pass_at_k"], 4),
                    f"{name}_slip_share_of_errors": round(sum(v for k, v in errors.items() if k in SLIPS)
                                                          / max(sum(errors.values()), 1), 4),
                    **{f"{name}_errors_{k}": v for k, v in errors.items()},
                    **{f"{name}_{k}": v for k, v in rankings.items()}}
    publish(args.name, results)


if __name__ == "__main__":
    main()
