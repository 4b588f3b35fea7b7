"""Sample a policy's solutions, grade them, and summarise accuracy (greedy, per sample, pass@k).

On the model organism every sample is also scored by the exact checker, so the summary shows
*where* the policy goes wrong, not only how often.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from glore_ray.config import GloreConfig
from glore_ray.core.generation import Engine, Sampling
from glore_ray.core.organism import grade
from glore_ray.core.problems import Problem
from glore_ray.core.prompts import solve_prompt
from glore_ray.io import write_jsonl

log = logging.getLogger(__name__)


@dataclass
class GradedSample:
    problem_id: str
    mode: str
    """`greedy` or `sampled`."""
    index: int
    text: str
    n_tokens: int
    finish_reason: str
    correct: bool
    first_wrong_step: int | None = None
    """Exact first wrong step (model organism only)."""
    error_kind: str | None = None

    def to_row(self) -> dict:
        return asdict(self)


def sample_and_grade(engine: Engine, problems: Sequence[Problem], sampling: Sampling,
                     mode: str) -> list[GradedSample]:
    generations = engine.generate([solve_prompt(p.question) for p in problems], sampling)
    graded = []
    for problem, generation in zip(problems, generations, strict=True):
        for index, c in enumerate(generation.completions):
            g = grade(problem, c.text)
            graded.append(GradedSample(problem.id, mode, index, c.text, c.n_tokens, c.finish_reason, g.correct,
                                       g.first_wrong, g.kind))
    return graded


def summarize(samples: Iterable[GradedSample]) -> dict:
    """Flat metrics: greedy accuracy, per-sample accuracy, pass@k, tokens, the checker's error mix."""
    samples = list(samples)
    greedy = [s for s in samples if s.mode == "greedy"]
    sampled = [s for s in samples if s.mode == "sampled"]
    by_problem: dict[str, list[bool]] = {}
    for s in sampled:
        by_problem.setdefault(s.problem_id, []).append(s.correct)
    summary = {
        "n_problems": len({s.problem_id for s in greedy} | by_problem.keys()),
        "greedy_accuracy": _mean(s.correct for s in greedy),
        "sample_accuracy": _mean(s.correct for s in sampled),
        "k": max((len(v) for v in by_problem.values()), default=0),
        "pass_at_k": _mean(any(v) for v in by_problem.values()),
        "mean_completion_tokens": _mean(s.n_tokens for s in greedy + sampled),
        "truncated": sum(s.finish_reason == "length" for s in greedy + sampled),
    }
    wrong = Counter(s.error_kind for s in sampled if s.error_kind)
    for kind, count in sorted(wrong.items()):
        summary[f"sampled_errors.{kind}"] = count
    return summary


def _mean(values: Iterable[float]) -> float:
    values = list(values)
    return sum(values) / len(values) if values else 0.0


def format_table(rows: Sequence[tuple[str, str]], title: str) -> str:
    width = max(len(name) for name, _ in rows)
    lines = [title, "-" * len(title)] + [f"{name:<{width}}  {value}" for name, value in rows]
    return "\n".join(lines)


def summary_table(summary: dict, title: str) -> str:
    rows = [("problems", str(summary["n_problems"])),
            ("greedy accuracy", f"{summary['greedy_accuracy']:.1%}"),
            ("per-sample accuracy (T>0)", f"{summary['sample_accuracy']:.1%}"),
            (f"pass@{summary['k']}", f"{summary['pass_at_k']:.1%}"),
            ("mean completion tokens", f"{summary['mean_completion_tokens']:.1f}"),
            ("truncated completions", str(summary["truncated"]))]
    rows += [(f"wrong samples: {key.split('.', 1)[1]}", str(value))
             for key, value in summary.items() if key.startswith("sampled_errors.")]
    return format_table(rows, title)


def evaluate_policy(cfg: GloreConfig, test_data: str, model_dir: str, out_dir: str) -> dict:
    """Greedy and k sampled solutions per test problem, graded; writes samples and a summary."""
    from glore_ray.models.engines import make_engine
    from glore_ray.pipeline.data_stage import read_problems

    problems = read_problems(test_data, f"{out_dir}/quarantine.jsonl", limit=cfg.eval.n_problems)
    engine = make_engine(model_dir, cfg.engine)
    t0 = time.perf_counter()
    greedy = Sampling(n=1, temperature=0.0, max_tokens=cfg.sampling.max_tokens, seed=cfg.sampling.seed)
    sampled = Sampling(n=cfg.eval.k, temperature=cfg.eval.temperature, top_p=cfg.sampling.top_p,
                       max_tokens=cfg.sampling.max_tokens, seed=cfg.sampling.seed)
    samples = (sample_and_grade(engine, problems, greedy, "greedy")
               + sample_and_grade(engine, problems, sampled, "sampled"))
    elapsed = time.perf_counter() - t0
    summary = summarize(samples) | {"engine": engine.name, "generation_seconds": round(elapsed, 1),
                                    "generated_tokens": sum(s.n_tokens for s in samples)}
    out = Path(out_dir)
    write_jsonl(str(out / "samples.jsonl"), (s.to_row() for s in samples))
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    log.info(summary_table(summary, f"{cfg.run_name}: policy on {test_data} ({engine.name} engine)"))
    return summary
