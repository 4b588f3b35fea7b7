"""K policy samples of a question, graded and de-duplicated into one record per question.

A question's record keeps its unique rollouts with how many of the K samples each stands for, so
the counts (samples, unique, correct) survive de-duplication and the label stages see a question's
rollouts together (shared prefixes, global pairs). Pure Python over the engine's output.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass

from glore_ray.core.generation import Generation
from glore_ray.core.grading import split_steps
from glore_ray.core.organism import grade, is_organism_problem
from glore_ray.core.problems import Problem


@dataclass
class Rollout:
    """One unique policy sample of a question, graded: the rollouts stage's record, which the
    labellers and the pairs read as it is."""

    id: str
    steps: list[str]
    text: str
    correct: bool
    n_tokens: int = 0
    finish_reason: str = "stop"
    count: int = 1
    """Samples of the K with this text."""
    first_wrong: int | None = None
    """Exact first wrong step (model organism; None when right or unknown)."""
    greedy: bool = False
    """The policy's greedy solution: the reward models judge greedy texts (drafts, refinements) at
    evaluation, so they train on them too. It is not one of the K samples (count excludes it)."""


@dataclass(frozen=True)
class Question(Problem):
    """A problem with its unique rollouts: one row of the rollouts stage."""

    rollouts: tuple[Rollout, ...] = ()


def _normal(text: str) -> str:
    return "\n".join(line.strip() for line in text.strip().splitlines() if line.strip())


def grade_rollouts(problem: Problem, generation: Generation, greedy: Generation | None = None) -> dict:
    """The question's row: the problem's fields, the number of samples, whether the exact checker
    knows each step's truth (model organism), and its unique rollouts, the greedy one (if given)
    marked as such."""
    unique: dict[str, Rollout] = {}
    organism = is_organism_problem(problem)

    def record(text: str, n_tokens: int, finish_reason: str) -> Rollout:
        key = _normal(text)
        if key not in unique:
            graded = grade(problem, text)
            unique[key] = Rollout(f"{problem.id}/r{len(unique)}", split_steps(text), text,
                                  graded.correct, n_tokens, finish_reason, 0, graded.first_wrong)
        return unique[key]

    for completion in generation.completions:
        record(completion.text, completion.n_tokens, completion.finish_reason).count += 1
    for completion in greedy.completions if greedy is not None else ():
        record(completion.text, completion.n_tokens, completion.finish_reason).greedy = True
    return {**problem.to_row(), "n_samples": len(generation.completions), "step_truth": organism,
            "rollouts": [asdict(r) for r in unique.values()]}


def question_from_row(row: dict) -> Question:
    """A rollouts row as its record (Ray Data batches hold lists as arrays)."""
    rollouts = tuple(Rollout(**{**r, "steps": list(r["steps"])}) for r in row["rollouts"])
    return dataclasses.replace(Question.from_row(row), rollouts=rollouts)
