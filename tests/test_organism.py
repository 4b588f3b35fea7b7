"""The model organism: reproducible problems in GSM8K's format, and an exact first-wrong-step checker."""

from __future__ import annotations

import random
import re
from collections import Counter
from dataclasses import replace

import pytest

from glore_ray.config import OrganismConfig
from glore_ray.core.grading import extract_answer, render_solution, split_steps
from glore_ray.core.organism import StepCheck, check_solution, generate, make_problem, parse_equation
from glore_ray.core.problems import Problem, load_problems
from glore_ray.core.quarantine import Quarantine
from glore_ray.io import write_jsonl

CFG = OrganismConfig()
PROBLEMS = list(generate(CFG, "train", 600))


def test_same_seed_same_problems_and_shards_agree() -> None:
    assert list(generate(CFG, "train", 50)) == PROBLEMS[:50]
    assert list(generate(CFG, "train", 10, start=40)) == PROBLEMS[40:50]
    assert make_problem(replace(CFG, seed=1), "train", 0) != PROBLEMS[0]


def test_splits_do_not_share_questions() -> None:
    test_questions = {p.question for p in generate(CFG, "test", 600)}
    validation_questions = {p.question for p in generate(CFG, "validation", 600)}
    assert not test_questions & {p.question for p in PROBLEMS}
    assert not validation_questions & test_questions and not validation_questions & {p.question for p in PROBLEMS}
    assert sum(1 for _ in generate(CFG, "validation")) == CFG.n_validation


@pytest.mark.parametrize("min_steps, max_steps", [(2, 2), (4, 4), (6, 6), (2, 6)])
def test_step_count_knobs(min_steps: int, max_steps: int) -> None:
    cfg = replace(CFG, min_steps=min_steps, max_steps=max_steps)
    counts = {len(p.steps) for p in generate(cfg, "train", 200)}
    assert counts <= set(range(min_steps, max_steps + 1))
    assert min_steps in counts and max_steps in counts


def test_numbers_stay_in_range() -> None:
    cfg = replace(CFG, max_operand=20, max_result=200)
    for p in generate(cfg, "train", 300):
        for step in p.steps:
            eq = parse_equation(step)
            assert 1 <= eq.result <= 200 and eq.result.denominator == 1
        # A stated number is an operand (<= max_operand), a multiplier, or a comparison value.
        assert all(int(n) <= 200 for n in re.findall(r"\d+", p.question))


def test_problems_are_gsm8k_format_and_round_trip_through_jsonl(tmp_path) -> None:
    path = str(tmp_path / "train.jsonl")
    write_jsonl(path, (p.to_row() for p in PROBLEMS[:50]))
    quarantine = Quarantine()
    assert list(load_problems(path, quarantine=quarantine)) == PROBLEMS[:50]
    assert not quarantine
    for p in PROBLEMS[:50]:
        solution = p.solution()
        assert solution.splitlines()[-1] == f"#### {p.answer}"
        assert split_steps(solution) == list(p.steps)
        assert extract_answer(solution) == p.gold


def test_problem_mix_exercises_operand_choice() -> None:
    questions = [p.question for p in PROBLEMS]
    assert any("How many more" in q for q in questions)
    assert any(q.startswith("Each of the") for q in questions)  # a fact stated before it is needed
    assert any(re.search(r"years old|miles away|pets|hours a day|pages", q) for q in questions)  # distractor
    assert {parse_equation(s).op for p in PROBLEMS for s in p.steps} == {"+", "-", "*", "/"}


def test_gold_solutions_have_no_wrong_step() -> None:
    for p in PROBLEMS:
        assert check_solution(p, p.solution()).first_wrong is None, p


def _corrupt(p: Problem, i: int, step: str) -> str:
    steps = list(p.steps)
    steps[i] = step
    return render_solution(steps, p.answer)


def test_wrong_arithmetic_is_found_where_it_was_made() -> None:
    rng = random.Random(0)
    for p in PROBLEMS:
        i = rng.randrange(len(p.steps))
        eq = parse_equation(p.steps[i])
        wrong = p.steps[i].replace(f"= {eq.result}", f"= {eq.result + rng.choice([-10, -1, 1, 10])}")
        result = check_solution(p, _corrupt(p, i, wrong))
        assert (result.first_wrong, result.kind) == (i, "arithmetic")


def test_an_operand_from_nowhere_is_found_where_it_was_used() -> None:
    for p in PROBLEMS:
        i = len(p.steps) - 1
        eq = parse_equation(p.steps[i])
        stated = {int(n) for n in re.findall(r"\d+", p.question)}
        made_up = next(n for n in range(997, 0, -1) if n not in stated
                       and all(n != parse_equation(s).result for s in p.steps))
        step = f"So {made_up} {eq.op} {eq.b} = {eval(f'{made_up} {eq.op} {eq.b}')}"
        assert check_solution(p, _corrupt(p, i, step)).kind == "unknown_operand"
        assert check_solution(p, _corrupt(p, i, step)).first_wrong == i


def test_a_distractor_number_is_a_wrong_plan_step() -> None:
    p = next(p for p in PROBLEMS if re.search(r"is (\d+) years old", p.question))
    age = int(re.search(r"is (\d+) years old", p.question).group(1))
    first = parse_equation(p.steps[0])
    step = f"Then {first.a} + {age} = {first.a + age}."
    result = check_solution(p, _corrupt(p, 0, step))
    assert (result.first_wrong, result.kind) == (0, "wrong_plan")


def test_commuted_operands_are_still_the_plan_step() -> None:
    p = next(p for p in PROBLEMS if parse_equation(p.steps[0]).op == "*")
    eq = parse_equation(p.steps[0])
    assert check_solution(p, _corrupt(p, 0, f"That is {eq.b} * {eq.a} = {eq.result}.")).first_wrong is None


def test_subtraction_in_the_wrong_order_is_wrong() -> None:
    p = next(p for p in PROBLEMS if "more" in p.steps[-1])
    eq = parse_equation(p.steps[-1])
    step = f"The difference is {eq.b} - {eq.a} = {eq.b - eq.a}."
    assert check_solution(p, _corrupt(p, len(p.steps) - 1, step)).first_wrong == len(p.steps) - 1


def test_missing_equation_wrong_answer_and_no_answer() -> None:
    p = PROBLEMS[0]
    n = len(p.steps)
    assert check_solution(p, _corrupt(p, 1, "Then we think hard.")) == StepCheck(1, "no_equation")
    assert check_solution(p, render_solution(p.steps, str(p.gold + 1))) == StepCheck(n, "wrong_answer")
    assert check_solution(p, "\n".join(p.steps)) == StepCheck(n, "no_answer")


def test_a_truncated_solution_is_wrong_at_its_answer_line() -> None:
    p = next(p for p in PROBLEMS if len(p.steps) >= 3)
    assert check_solution(p, render_solution(p.steps[:1], "0")) == StepCheck(1, "wrong_answer")


def test_a_step_hiding_a_wrong_result_in_a_chain_is_wrong() -> None:
    p = PROBLEMS[0]
    eq = parse_equation(p.steps[0])
    hidden = f"So {eq.a} {eq.op} {eq.b} = {eq.result} + 0 = {eq.result + 7}."
    twice = f"So {eq.a} {eq.op} {eq.b} = {eq.result + 1} so {eq.a} {eq.op} {eq.b} = {eq.result}."
    assert check_solution(p, _corrupt(p, 0, hidden)).first_wrong == 0
    assert check_solution(p, _corrupt(p, 0, twice)) == StepCheck(0, "arithmetic")


def test_step_counts_are_drawn_uniformly() -> None:
    counts = Counter(len(p.steps) for p in generate(replace(CFG, max_steps=6), "train", 5000))
    assert set(counts) == {2, 3, 4, 5, 6}
    assert all(abs(c / 5000 - 0.2) < 0.03 for c in counts.values()), counts
