"""One batch of the evaluation, over any models that generate and score (in-process engines, or the
evaluation's model servers behind the same interfaces): per question a greedy draft and k samples,
every reward model's step values on all of them, the refinement ensemble once (where = SORM, the
drafts' scores reused), the local refiner again from the ORM's first low step and from the exact
first wrong step, and the iterated rounds. Each question becomes one record, which
`report.build_report` turns into the report.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

from glore_ray.config import EvalConfig, SamplingConfig
from glore_ray.config.ensemble import EVAL_SCORERS, EnsembleSettings
from glore_ray.core.ensemble import Decision, RefinementEnsemble, ensemble_models, first_bad_step, iterate
from glore_ray.core.generation import Engine, Sampling, StepScorer
from glore_ray.core.grading import is_correct, scored_steps, split_steps
from glore_ray.core.organism import grade, is_organism_problem
from glore_ray.core.problems import Problem
from glore_ray.core.prompts import solve_prompt

Models = Mapping[str, Engine | StepScorer]


def ranker(models: Mapping[str, object]) -> str:
    """The scorer that ranks candidates: the likelihood reranker when there is one, else the ORM."""
    return "reranker" if "reranker" in models else "orm"


def _graded(problem: Problem, text: str) -> dict:
    g = grade(problem, text)
    return {"correct": g.correct, "first_wrong": g.first_wrong, "error_kind": g.kind}


def _best(scores: list[list[float]]) -> int:
    """Index of the solution with the highest final value (the first on ties)."""
    finals = [v[-1] if v else 0.0 for v in scores]
    return max(range(len(finals)), key=lambda i: (finals[i], -i))


def _oracle_bad_step(draft: str, first_wrong: int | None) -> int | None:
    """The exact first wrong reasoning step of a draft (None when it has none, or when only its
    answer line is wrong: there is no step to rewrite from)."""
    if first_wrong is None or first_wrong >= len(split_steps(draft)):
        return None
    return first_wrong


def score_solutions(models: Models, problems: Sequence[Problem], texts: Sequence[Sequence[str]]) -> list[list[dict]]:
    """Each question's solutions graded and read by every reward model in `models`, one call per model."""
    questions = [p.question for p, ts in zip(problems, texts, strict=True) for _ in ts]
    steps = [scored_steps(t) for ts in texts for t in ts]
    values = {m: iter(models[m].score(questions, steps) if steps else []) for m in EVAL_SCORERS if m in models}
    return [[{"text": t, **_graded(p, t), **{m: next(v) for m, v in values.items()}} for t in ts]
            for p, ts in zip(problems, texts, strict=True)]


def score_candidates(models: Models, problems: Sequence[Problem], decisions: Sequence[Decision]) -> list[dict[str, dict]]:
    """Each question's refinements (the candidates the ensemble ranks beside the draft), graded and
    read by every reward model: the population the report's candidate metrics are measured on."""
    named = [[(name, text) for name, text in d.refinements().items() if scored_steps(text)] for d in decisions]
    scored = score_solutions(models, problems, [[text for _, text in pairs] for pairs in named])
    return [{name: row for (name, _), row in zip(pairs, rows, strict=True)} for pairs, rows in zip(named, scored)]


def evaluated(ensemble: EnsembleSettings, ev: EvalConfig, max_tokens: int) -> EnsembleSettings:
    """The ensemble as the evaluation runs it: refining as `eval.always_refine` says, where = SORM
    (the ORM's "where" is a row of its own), at most `max_tokens` per generation unless set."""
    return dataclasses.replace(ensemble.with_max_tokens(max_tokens), always_refine=ev.always_refine, where="sorm")


def evaluate_batch(models: Models, problems: Sequence[Problem], ev: EvalConfig, ensemble: EnsembleSettings,
                   sampling: SamplingConfig) -> tuple[list[dict], dict[str, int]]:
    """The records of a batch of problems, and what it generated (samples, tokens). Each model
    output is computed once: the drafts are scored with the samples and the ensemble reuses those
    scores; the rows that differ only in where the local refiner starts (the ORM's first low step,
    the exact first wrong step) reuse its draft, global refinement and scores."""
    prompts = [solve_prompt(p.question) for p in problems]
    questions = [p.question for p in problems]
    policy = models["policy"]
    greedy = policy.generate(prompts, Sampling(n=1, temperature=0.0, max_tokens=sampling.max_tokens))
    sampled = policy.generate(prompts, Sampling(n=ev.k, temperature=ev.temperature, top_p=sampling.top_p,
                                                max_tokens=sampling.max_tokens, seed=sampling.seed))
    drafts = [g.completions[0].text for g in greedy]
    scored = score_solutions(models, problems, [[d] + [c.text for c in g.completions]
                                                for d, g in zip(drafts, sampled, strict=True)])
    generated = {"samples": sum(len(s) for s in scored),
                 "generated_tokens": sum(c.n_tokens for g in (*greedy, *sampled) for c in g.completions)}

    ranked_by = ranker(models)
    settings = evaluated(ensemble, ev, sampling.max_tokens)
    ensemble = RefinementEnsemble.of(ensemble_models(models), settings)
    draft_rows = [s[0] for s in scored]
    decisions = ensemble.solve(questions, drafts, [v[-1] if (v := d[ranked_by]) else 0.0 for d in draft_rows],
                               [d["sorm"] for d in draft_rows])
    # The same refinement with the local refiner started elsewhere: at the ORM's first low step, and
    # at the exact first wrong step (model organism). Only refined drafts are rewritten.
    orm_where = [first_bad_step(row["orm"], d.draft, settings.orm_step_threshold) if d.refined else None
                 for row, d in zip(draft_rows, decisions, strict=True)]
    oracle_where = [_oracle_bad_step(d.draft, row["first_wrong"]) if d.refined else None
                    for row, d in zip(draft_rows, decisions, strict=True)]
    local_orm = ensemble.refine_locally(questions, drafts, orm_where)
    local_oracle = ensemble.refine_locally(questions, drafts, oracle_where)
    candidates = score_candidates(models, problems, decisions)
    rounds = [[d.candidate(d.chosen) for d in decided]
              for decided in iterate(ensemble, questions, decisions, ev.max_rounds, ev.temperature, sampling.seed)]

    records = []
    for i, (problem, solutions, decision) in enumerate(zip(problems, scored, decisions, strict=True)):
        draft_ok = solutions[0]["correct"]

        def right(text: str | None) -> bool:
            return draft_ok if text is None else is_correct(text, problem.gold)  # no candidate: the draft stands

        organism = is_organism_problem(problem)
        samples, with_greedy = solutions[1:], solutions[:ev.k]  # with_greedy: the draft and k - 1 samples
        correct = {"draft": draft_ok,
                   "best_of_k": samples[_best([s[ranked_by] for s in samples])]["correct"],
                   "best_of_k_with_greedy": with_greedy[_best([s[ranked_by] for s in with_greedy])]["correct"],
                   "global": right(decision.global_), "local": right(decision.local),
                   "any_refinement": any(right(text) for text in decision.refinements().values()),
                   "local_orm": right(local_orm[i]),
                   "local_oracle_where": right(local_oracle[i]) if organism else None,
                   "chosen": right(decision.candidate(decision.chosen)),
                   "rounds": [right(texts[i]) for texts in rounds]}
        records.append({"id": problem.id, "question": problem.question, "answer": problem.answer,
                        "step_truth": organism, "solutions": solutions, "correct": correct,
                        "decision": decision.to_row(), "candidates": candidates[i],
                        "local_orm": local_orm[i], "orm_first_bad_step": orm_where[i],
                        "local_oracle_where": local_oracle[i], "oracle_first_bad_step": oracle_where[i]})
    return records, generated
