"""K policy samples of a question, graded and de-duplicated into one record per question.

A question's record keeps its unique rollouts with how many of the K samples each stands for, so
the counts (samples, unique, correct) survive de-duplication and the label stages see a question's
rollouts together (shared prefixes, global pairs). Pure Python over the engine's output.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from glore_ray.data import Problem
from glore_ray.engines import Generation
from glore_ray.grading import is_correct, split_steps
from glore_ray.labels import Question, Rollout
from glore_ray.organism import check_solution, is_organism_problem


@dataclass
class RolloutRecord:
    id: str
    text: str
    steps: list[str]
    correct: bool
    n_tokens: int
    finish_reason: str
    count: int
    """Samples of the K with this text."""
    first_wrong: int | None
    """Exact first wrong step (model organism; None when right or unknown)."""


def _normal(text: str) -> str:
    return "\n".join(line.strip() for line in text.strip().splitlines() if line.strip())


def grade_rollouts(problem: Problem, generation: Generation) -> dict:
    """The question's row: the problem's fields, the number of samples, whether the exact checker
    knows each step's truth (model organism), and its unique rollouts."""
    unique: dict[str, RolloutRecord] = {}
    organism = is_organism_problem(problem)
    for completion in generation.completions:
        key = _normal(completion.text)
        if key in unique:
            unique[key].count += 1
            continue
        first_wrong = check_solution(problem, completion.text).first_wrong if organism else None
        unique[key] = RolloutRecord(f"{problem.id}/r{len(unique)}", completion.text, split_steps(completion.text),
                                    is_correct(completion.text, problem.gold), completion.n_tokens,
                                    completion.finish_reason, 1, first_wrong)
    return {**problem.to_row(), "n_samples": len(generation.completions), "step_truth": organism,
            "rollouts": [asdict(r) for r in unique.values()]}


def question_from_row(row: dict) -> Question:
    """The labeller's view of a rollouts row."""
    return Question(row["id"], row["question"], row["answer"],
                    [Rollout(r["id"], list(r["steps"]), r["text"], bool(r["correct"])) for r in row["rollouts"]])
