"""What an engine start costs on this machine, and what the compiled model buys back: the project's
vLLM engine (glore_ray.models.engines.VLLMEngine) started compiled and eager, each in a fresh
process, on the same tiny policy, then K samples for the same prompts.

    .venv/bin/python bench/engine_start.py --model <HF folder> [--questions <problems JSONL>] [--k 4]

Prints a table and writes bench/results/engine_start.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.results_table import publish  # noqa: E402


def one_start(model: str, questions: str, k: int, eager: bool) -> dict:
    from glore_ray.config import EngineConfig
    from glore_ray.core.generation import Sampling
    from glore_ray.core.prompts import solve_prompt
    from glore_ray.models.engines import VLLMEngine

    prompts = [solve_prompt(json.loads(line)["question"]) for line in Path(questions).read_text().splitlines()[:300]]
    t0 = time.perf_counter()
    engine = VLLMEngine(model, EngineConfig(enforce_eager=eager))
    start_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    generations = engine.generate(prompts, Sampling(n=k, temperature=1.0, max_tokens=128))
    generate_s = time.perf_counter() - t0
    tokens = sum(c.n_tokens for g in generations for c in g.completions)
    return {"start_s": round(start_s, 1), "generate_s": round(generate_s, 1), "tokens_per_s": round(tokens / generate_s)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--questions", required=True)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--child", choices=["eager", "compiled"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:  # one start per process: nothing cached in memory from the other
        print(json.dumps(one_start(args.model, args.questions, args.k, args.child == "eager")))
        return
    results: dict = {"prompts": 300, "k": args.k}
    for mode in ("compiled", "eager"):
        out = subprocess.run([sys.executable, __file__, "--model", args.model, "--questions", args.questions,
                              "--k", str(args.k), "--child", mode], capture_output=True, text=True, check=True)
        results |= {f"{mode}_{key}": value for key, value in json.loads(out.stdout.strip().splitlines()[-1]).items()}
    results["eager_start_saving_s"] = round(results["compiled_start_s"] - results["eager_start_s"], 1)
    results["eager_vs_compiled_tokens_per_s"] = round(results["eager_tokens_per_s"] / results["compiled_tokens_per_s"], 3)
    publish("engine_start", results)


if __name__ == "__main__":
    main()
