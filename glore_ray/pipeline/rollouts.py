"""The rollout stage on Ray Data: K graded, de-duplicated policy samples per training question (and
its greedy solution), the data of every reward model and refiner; and an expert-iteration round's
SFT rows from its samples. The grading rules are plain functions in `core/rollouts.py`."""

from __future__ import annotations

import dataclasses
import itertools
import logging
from collections import Counter

import pyarrow as pa

from glore_ray.config import EngineConfig, EnginePoolConfig, RolloutConfig, SamplingConfig
from glore_ray.core.generation import Sampling
from glore_ray.core.problems import Problem, load_problems
from glore_ray.core.prompts import solve_prompt
from glore_ray.core.quarantine import Quarantine
from glore_ray.core.rollouts import grade_rollouts
from glore_ray.io import absolute, count_rows, parquet_rows
from glore_ray.layout import DATA, ROWS, output
from glore_ray.pipeline.progress import generation_line, stage_progress
from glore_ray.pipeline.ray_data import (
    Replica,
    in_batches,
    pool_args,
    report_replacements,
    write_dataset,
    write_parquet,
)
from glore_ray.pipeline.runner import StageContext
from glore_ray.pipeline.schemas import ROLLOUTS_SCHEMA, SFT_SCHEMA

log = logging.getLogger(__name__)
QUESTIONS_PER_FILE = 10_000
"""Validated questions per Parquet file: the unit Ray Data reads in parallel."""


class RolloutSampler(Replica):
    def __init__(self, model: str, engine: EngineConfig, pool: EnginePoolConfig, counters, sampling: Sampling,
                 greedy: bool):
        super().__init__(model, engine, pool, counters)
        self.sampling = sampling
        self.greedy = dataclasses.replace(self.sampling, n=1, temperature=0.0) if greedy else None

    def process(self, batch: pa.Table) -> pa.Table:
        problems = [Problem.from_row(row) for row in batch.to_pylist()]
        prompts = [solve_prompt(p.question) for p in problems]
        # The greedy solutions ride in the samples' engine call: a call ends with its longest
        # sequence, and a second call of one sequence per question would run at a fraction of the
        # engine's batch.
        n = len(prompts)
        if self.greedy:
            generations = self.engine.generate(prompts * 2, [self.sampling] * n + [self.greedy] * n)
            samples, greedy = generations[:n], generations[n:]
        else:
            generations = samples = self.engine.generate(prompts, self.sampling)
            greedy = [None] * n
        rows = [grade_rollouts(p, g, d) for p, g, d in zip(problems, samples, greedy, strict=True)]
        generated = [c for g in generations for c in g.completions]
        self.counters.add.remote({"questions": len(rows), "samples": len(generated),
                                  "generated_tokens": sum(c.n_tokens for c in generated)})
        return pa.Table.from_pylist(rows, schema=ROLLOUTS_SCHEMA)


def prepare_questions(source: str, out_dir: str, first: int, max_questions: int, keep_calculator: bool) -> dict:
    """Validate questions `first` .. `first + max_questions` (0: all) of a GSM8K/SVAMP/problems file
    into Parquet under `out_dir/questions`, streaming (QUESTIONS_PER_FILE per file); bad records
    go to `out_dir/quarantine.jsonl`."""
    quarantine = Quarantine()
    problems = load_problems(source, quarantine=quarantine, keep_calculator=keep_calculator)
    problems = itertools.islice(problems, first, first + max_questions if max_questions else None)
    count, part = 0, 0
    while chunk := [p.to_row() for p in itertools.islice(problems, QUESTIONS_PER_FILE)]:
        write_parquet(f"{out_dir}/questions/part-{part:05d}.parquet", chunk)
        count, part = count + len(chunk), part + 1
    if quarantine:
        quarantine.write_jsonl(f"{out_dir}/quarantine.jsonl")
        log.info(f"{quarantine.summary()} -> {out_dir}/quarantine.jsonl")
    if count == 0:
        raise ValueError(f"{source}: no valid questions (quarantined: {len(quarantine)})")
    return {"questions": count, "quarantined": len(quarantine)}


def rollout_sampling(rollouts: RolloutConfig, sampling: SamplingConfig) -> Sampling:
    """The K samples per question of the rollout stage (its greedy solution: n 1 at temperature 0)."""
    return Sampling(n=rollouts.k, temperature=rollouts.temperature, top_p=sampling.top_p,
                    max_tokens=sampling.max_tokens, seed=sampling.seed)


def run_rollouts(ctx: StageContext, rollouts: RolloutConfig, engine: EngineConfig, sampling: SamplingConfig,
                 keep_calculator: bool, first_question: int) -> dict:
    """K graded, de-duplicated samples per question of `questions`, from question `first_question`
    on, by `policy` -> `data/` (one row per question)."""
    import ray
    import ray.data

    out_dir = absolute(ctx.dir)
    prepared = prepare_questions(ctx.inputs["questions"], out_dir, first_question, rollouts.max_questions,
                                 keep_calculator)
    line = generation_line(ctx.name, prepared["questions"])
    with stage_progress(out_dir, ctx.name, ctx.run_name, line) as counters:
        questions = in_batches(ray.data.read_parquet(f"{out_dir}/questions"), prepared["questions"], rollouts.pool)
        sampler = {"model": absolute(ctx.inputs["policy"]), "engine": engine, "pool": rollouts.pool,
                   "counters": counters, "sampling": rollout_sampling(rollouts, sampling), "greedy": rollouts.greedy}
        write_dataset(questions.map_batches(RolloutSampler, fn_constructor_kwargs=sampler,
                                            **pool_args(rollouts.pool, "rollouts.pool")),
                      output(out_dir, DATA), ROLLOUTS_SCHEMA)
        totals, _ = ray.get(counters.snapshot.remote())
    report_replacements(ctx.name, totals, rollouts.pool)
    counts = _rollout_counts(output(out_dir, DATA)) | {"quarantined": prepared["quarantined"],
                                                   "generated_tokens": totals.get("generated_tokens", 0),
                                                   "replica_starts": totals.get("replica_starts", 0)}
    if counts["questions"] != prepared["questions"]:
        raise RuntimeError(f"rollouts: {counts['questions']} questions written for {prepared['questions']} read")
    return counts


def _rollout_counts(path: str) -> dict:
    counts: Counter = Counter()
    ids = set()
    for row in parquet_rows(path, ["id", "n_samples", "rollouts"]):
        if row["id"] in ids:
            raise RuntimeError(f"rollouts: question {row['id']} written twice")
        ids.add(row["id"])
        counts["questions"] += 1
        counts["samples"] += row["n_samples"]
        counts["unique"] += len(row["rollouts"])
        counts["correct_samples"] += sum(r["count"] for r in row["rollouts"] if r["correct"])
        counts["correct_unique"] += sum(r["correct"] for r in row["rollouts"])
    return dict(counts)


def write_expert_iteration_rows(ctx: StageContext, seed: int) -> dict:
    """An expert-iteration round's SFT rows (`rows/`): for every sampled question its gold solution
    and each correct unique rollout, shuffled (seeded): rows in file order would put a question's
    solutions in one batch, and a round reading only its first steps x batch rows would see only some."""
    import ray.data

    def rows(batch: pa.Table) -> pa.Table:
        out_rows = []
        for row in batch.to_pylist():
            problem = Problem.from_row(row)
            out_rows.append({"id": problem.id, "question": problem.question, "solution": problem.solution()})
            out_rows += [{"id": r["id"], "question": problem.question, "solution": r["text"]}
                         for r in row["rollouts"] if r["correct"]]
        return pa.Table.from_pylist(out_rows, schema=SFT_SCHEMA)

    out = output(absolute(ctx.dir), ROWS)
    source = ray.data.read_parquet(absolute(ctx.inputs["samples"]))
    write_dataset(source.map_batches(rows, batch_format="pyarrow").random_shuffle(seed=seed), out, SFT_SCHEMA)
    n_rows, questions = count_rows(out), count_rows(ctx.inputs["samples"])
    return {"rows": n_rows, "gold_rows": questions, "correct_samples": n_rows - questions}
