"""One evaluation batch (`core.evaluation.evaluate_batch`) over scripted models on organism problems,
with no cluster: what every record holds, that each draft is read once per reward model, and that
a bad record in the evaluated file stops the stage before any model loads."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import pytest

from glore_ray.config import EnsembleSettings, EvalConfig, OrganismConfig, SamplingConfig
from glore_ray.core.evaluation import evaluate_batch
from glore_ray.core.generation import Completion, Generation, Sampling
from glore_ray.core.grading import render_solution
from glore_ray.core.organism import generate
from glore_ray.testing.training_rows import corrupt

PROBLEMS = list(generate(OrganismConfig(), "test", 2))
WRONG_AT = 1
"""The second problem's greedy draft goes wrong at this step."""
BAD_DRAFT = render_solution(corrupt(list(PROBLEMS[1].steps), WRONG_AT), "0")


def _problem(prompt: str):
    return next(p for p in PROBLEMS if p.question in prompt)


class Policy:
    """Greedy: the gold solution for the first problem, a draft wrong at step WRONG_AT for the
    second; samples: the gold solution."""

    def __init__(self):
        self.samplings: list[Sampling] = []

    def generate(self, prompts: Sequence[str], sampling: Sampling) -> list[Generation]:
        self.samplings.append(sampling)
        out = []
        for prompt in prompts:
            p = _problem(prompt)
            text = BAD_DRAFT if sampling.temperature == 0 and p is PROBLEMS[1] else p.solution()
            out.append(Generation(prompt, 7, [Completion(text, 5, "stop")] * sampling.n))
        return out


class Refiner:
    """Rewrites to the gold solution (global) or the gold remainder from the marked step (local)."""

    def __init__(self, local: bool):
        self.local = local

    def generate(self, prompts: Sequence[str], sampling: Sampling) -> list[Generation]:
        out = []
        for prompt in prompts:
            p = _problem(prompt)
            text = p.solution()
            if self.local:
                marked = next(i for i, line in enumerate(prompt.split("Draft:\n")[1].splitlines()) if "[BAD]" in line)
                text = render_solution(list(p.steps[marked:]), p.answer)
            out.append(Generation(prompt, 7, [Completion(text, 5, "stop")] * sampling.n))
        return out


class GoldScorer:
    """0.9 for a step of the gold solution (or its answer line), 0.1 for any other; counts what it reads."""

    def __init__(self):
        self.read: list[tuple[str, ...]] = []

    def score(self, questions: Sequence[str], steps: Sequence[Sequence[str]]) -> list[list[float]]:
        self.read += [tuple(s) for s in steps]
        out = []
        for q, solution in zip(questions, steps, strict=True):
            gold = _problem(q).solution().splitlines()
            out.append([0.9 if step in gold else 0.1 for step in solution])
        return out


def models() -> dict:
    return {"policy": Policy(), "global_refiner": Refiner(local=False), "local_refiner": Refiner(local=True),
            "orm": GoldScorer(), "sorm": GoldScorer()}


def test_a_batch_records_the_draft_samples_ensemble_and_where_rows_of_every_question() -> None:
    ev = EvalConfig(k=3, always_refine=True)
    scripted = models()
    records, generated = evaluate_batch(scripted, PROBLEMS, ev, EnsembleSettings(orm_step_threshold=0.5, step_threshold=0.5),
                                        SamplingConfig(max_tokens=64))

    assert generated == {"samples": 2 * (1 + 3), "generated_tokens": 2 * 5 * (1 + 3)}
    right, wrong = records
    assert [r["id"] for r in records] == [p.id for p in PROBLEMS] and all(r["step_truth"] for r in records)
    assert [len(r["solutions"]) for r in records] == [4, 4]
    assert right["correct"]["draft"] and not wrong["correct"]["draft"]
    assert wrong["solutions"][0]["first_wrong"] == WRONG_AT and wrong["solutions"][0]["error_kind"] == "arithmetic"
    assert right["solutions"][0]["first_wrong"] is None
    # Every reward model's step values on every solution.
    assert all(len(s["orm"]) == len(s["sorm"]) == len(s["text"].splitlines()) for r in records for s in r["solutions"])
    # The SORM finds the wrong step; both refiners fix it; the rerank picks a right candidate.
    assert wrong["decision"]["first_bad_step"] == WRONG_AT and wrong["decision"]["refined"]
    assert wrong["correct"]["global"] and wrong["correct"]["local"] and wrong["correct"]["chosen"]
    assert wrong["decision"]["chosen"] != "draft" and wrong["correct"]["any_refinement"]
    # The "where" rows: the ORM's first low step (ensemble.orm_step_threshold, 0.5 here) and the exact
    # first wrong step.
    assert wrong["orm_first_bad_step"] == WRONG_AT and wrong["oracle_first_bad_step"] == WRONG_AT
    assert wrong["correct"]["local_orm"] and wrong["correct"]["local_oracle_where"]
    assert right["correct"]["chosen"] and right["oracle_first_bad_step"] is None
    # Candidates graded and read by both reward models; one round by default.
    assert set(wrong["candidates"]) == set(wrong["decision"]["orm_scores"]) - {"draft"}
    assert all(c["correct"] and "orm" in c and "sorm" in c for c in wrong["candidates"].values())
    assert wrong["correct"]["rounds"] == [True]
    # The greedy draft decodes at temperature 0, the k samples at eval.temperature with the run's seed.
    greedy, sampled = scripted["policy"].samplings
    assert (greedy.n, greedy.temperature) == (1, 0.0) and (sampled.n, sampled.temperature) == (3, ev.temperature)


@pytest.mark.parametrize("always_refine", [True, False])
def test_each_draft_is_read_once_by_each_reward_model(always_refine) -> None:
    """The ensemble reuses the drafts' scores from the batch's one reading of every solution."""
    scripted = models()
    evaluate_batch(scripted, PROBLEMS, EvalConfig(k=2, always_refine=always_refine), EnsembleSettings(),
                   SamplingConfig(max_tokens=64))
    bad_steps = tuple(BAD_DRAFT.splitlines())
    assert scripted["orm"].read.count(bad_steps) == 1
    assert scripted["sorm"].read.count(bad_steps) == 1


def test_a_bad_record_in_the_evaluated_file_stops_the_stage_before_any_model_loads(tmp_path) -> None:
    """The data stage wrote the file; a record that no longer loads means it was changed since. The
    stage says so at once, naming the file and line, instead of after the whole evaluation."""
    import json

    from glore_ray.config import EngineConfig
    from glore_ray.pipeline.evaluation import run_evaluation
    from glore_ray.pipeline.runner import StageContext

    test = tmp_path / "test.jsonl"
    test.write_text(json.dumps(PROBLEMS[0].to_row()) + "\n" + '{"id": "x", "question": "Hi?"}\n')
    # Model folders that do not exist: loading any model would fail with another error.
    ctx = StageContext("evaluate", str(tmp_path / "evaluate"), {"test": str(test), "policy": str(tmp_path / "nowhere")})
    with pytest.raises(ValueError, match=rf"{test}: 1 bad record.*{test}:2: .*in a file the data stage wrote"):
        run_evaluation(ctx, replace(EvalConfig(), n_problems=10), EnsembleSettings(), EngineConfig(), SamplingConfig())
    assert not (tmp_path / "evaluate" / "decisions.jsonl").exists()
