"""The labelling rules on hand-built cases whose right labels are known: ORM, SORM (exhaustive and
efficient, propagation, the uses-the-result check), balancing, and refinement pairs.

The engine here is a scripted stand-in (continuations looked up by prefix), so each case states
exactly what the policy would say; the real vLLM engine runs in tests/test_stages.py."""

from __future__ import annotations

import random
from collections.abc import Sequence
from fractions import Fraction

import pytest

from glore_ray.core.generation import Completion, Generation, Sampling
from glore_ray.core.grading import step_result, uses_result
from glore_ray.core.labels import (
    LabelledRollout,
    SormLabeller,
    balance_weights,
    continuation_prompt,
    is_heldout,
    orm_labels,
    propagate,
    reward_model_row,
    row_weights,
    sorm_row,
    step_label_counts,
)
from glore_ray.core.pairs import global_pairs, local_pair
from glore_ray.core.problems import Problem
from glore_ray.core.prompts import BAD_MARK, local_refine_prompt
from glore_ray.core.rollouts import Question, Rollout, grade_rollouts

Q = "Ava has 3 boxes of 4 apples. She eats 2 apples. How many apples are left?"


class ScriptedPolicy:
    """Continuations by prefix: the last step of the prompt picks the list; samples cycle through it."""

    name = "scripted"

    def __init__(self, script: dict[str, list[str]]):
        self.script, self.calls = script, []

    def generate(self, prompts: Sequence[str], sampling: Sampling) -> list[Generation]:
        out = []
        for prompt in prompts:
            last = prompt.rstrip("\n").rsplit("\n", 1)[-1]
            options = self.script[last]
            self.calls.append((last, sampling.n))
            offset = sampling.seed % len(options)
            texts = [options[(offset + j) % len(options)] for j in range(sampling.n)]
            out.append(Generation(prompt, 10, [Completion(t, 5, "stop") for t in texts]))
        return out


def rollout(rid: str, steps: list[str], answer: str, correct: bool) -> Rollout:
    return Rollout(rid, steps, "\n".join(steps + [f"#### {answer}"]), correct)


RIGHT = rollout("q/r0", ["3 * 4 = 12 apples.", "12 - 2 = 10 apples."], "10", True)
WRONG = rollout("q/r1", ["3 * 4 = 13 apples.", "13 - 2 = 11 apples."], "11", False)
SCRIPT = {
    "3 * 4 = 12 apples.": ["12 - 2 = 10 apples.\n#### 10"],
    "12 - 2 = 10 apples.": ["#### 10"],
    # Right answer, but not from the prefix's 13: it must not count.
    "3 * 4 = 13 apples.": ["13 - 2 = 11 apples.\n#### 11", "3 * 4 = 12 so 12 - 2 = 10\n#### 10"],
    "13 - 2 = 11 apples.": ["#### 11"],
}


def labeller(mode: str, script=SCRIPT, k: int = 2) -> SormLabeller:
    return SormLabeller(ScriptedPolicy(script), mode, k=k, temperature=1.0, max_tokens=32)


def test_step_results_and_their_use() -> None:
    assert step_result("3 * 4 = 12 apples.") == 12
    assert step_result("She has 1,200 left.") == 1200
    assert step_result("Think first.") is None
    assert uses_result("12 - 2 = 10\n#### 10", Fraction(12))
    assert not uses_result("3 * 4 = 12 so 10\n#### 10", Fraction(13))
    assert uses_result("anything", None)


def test_a_result_counts_as_used_only_as_an_operand_or_the_answer() -> None:
    assert uses_result("Ben has 12 + 3 = 15 apples.\n#### 15", Fraction(12))
    assert uses_result("#### 12", Fraction(12))
    # Present but not used: recomputed as a step's own result, or restated.
    assert not uses_result("Ava has 5 + 7 = 12 apples.\nShe has 7 + 8 = 15.\n#### 15", Fraction(12))
    assert not uses_result("Ava still has 12 apples.\nShe has 7 + 8 = 15.\n#### 15", Fraction(12))


def test_propagation_and_orm() -> None:
    assert propagate([False, True, False]) == [True, True, False]
    assert propagate([False, False]) == [False, False]
    assert orm_labels(3, False) == [False] * 3 and orm_labels(2, True) == [True] * 2


@pytest.mark.parametrize("mode", ["exhaustive", "efficient"])
def test_sorm_labels_on_known_cases(mode) -> None:
    question = Question("q", Q, (), "10", [RIGHT, WRONG])
    (labelled,) = labeller(mode).label([question])
    assert [lr.labels for lr in labelled] == [[True, True], [False, False]]


def test_a_later_positive_step_makes_earlier_ones_positive() -> None:
    # Step 0's continuations never use its result, step 1's do: raw [F, T, F] -> [T, T, F].
    steps = ["3 * 4 = 12 apples.", "12 - 2 = 10 apples.", "10 + 1 = 11 apples."]
    script = {steps[0]: ["#### 10"], steps[1]: ["#### 10"], steps[2]: ["#### 11"]}
    question = Question("q", Q, (), "10", [rollout("q/r0", steps, "11", False)])
    (exhaustive,) = labeller("exhaustive", script).label([question])
    assert exhaustive[0].labels == [True, True, False]


def test_efficient_mode_agrees_for_fewer_continuations() -> None:
    steps = [f"{i} + 1 = {i + 1} apples." for i in range(9, 16)]  # results 10..16; the gold answer is 13
    script = {s: [f"{i + 1} + {12 - i} = 13\n#### 13"] for i, s in zip(range(9, 13), steps)}
    script |= {s: ["#### 99"] for s in steps[4:]}
    question = Question("q", Q, (), "13", [rollout("q/r0", steps, "16", False)])
    exhaustive, efficient = labeller("exhaustive", script), labeller("efficient", script)
    labels_a = exhaustive.label([question])[0][0].labels
    labels_b = efficient.label([question])[0][0].labels
    assert labels_a == labels_b == [True] * 4 + [False] * 3
    # Binary search: step 3 (one good continuation suffices), then 5 and 4 (k = 2 fresh samples
    # each: the rollout's own failed remainder is not one of them).
    assert efficient.stats.continuations == 1 + 2 + 2 < exhaustive.stats.continuations == 7 * 2


def test_a_wrong_rollouts_failed_remainder_is_not_one_of_the_k_samples() -> None:
    # P_0 of the wrong rollout: one of its two fresh samples succeeds. Both modes get k = 2 fresh
    # chances and agree that the step is good; when the failed remainder took one of the two,
    # efficient mode drew only the failing sample and called the step bad.
    steps = ["3 * 4 = 12 apples.", "12 - 3 = 9 apples."]
    script = {steps[0]: ["12 - 2 = 10 apples.\n#### 10", "12 - 5 = 7 apples.\n#### 7"], steps[1]: ["#### 9"]}
    question = Question("q", Q, (), "10", [rollout("q/r0", steps, "9", False)])
    for mode in ("exhaustive", "efficient"):
        (labelled,) = labeller(mode, script).label([question])
        assert labelled[0].labels == [True, False], mode


def test_efficient_mode_takes_a_correct_rollout_as_its_own_evidence() -> None:
    question = Question("q", Q, (), "10", [RIGHT])
    efficient = labeller("efficient")
    (labelled,) = efficient.label([question])
    assert labelled[0].labels == [True, True]
    assert efficient.stats.continuations == 0 and efficient.stats.free_continuations == 2


def test_efficient_mode_labels_a_shared_prefix_once() -> None:
    twin = rollout("q/r2", WRONG.steps[:1] + ["13 + 2 = 15 apples."], "15", False)
    question = Question("q", Q, (), "10", [WRONG, twin])
    policy = ScriptedPolicy(SCRIPT | {"13 + 2 = 15 apples.": ["#### 15"]})
    (labelled,) = SormLabeller(policy, "efficient", k=2, temperature=1.0, max_tokens=32).label([question])
    assert [lr.labels for lr in labelled] == [[False, False], [False, False]]
    # P_0 has two rollouts through it and is sampled k = 2 times, once for both.
    assert sum(n for last, n in policy.calls if last == WRONG.steps[0]) == 2


def test_efficient_mode_samples_a_prefix_k_times_at_most() -> None:
    policy = ScriptedPolicy(SCRIPT)
    efficient = SormLabeller(policy, "efficient", k=3, temperature=1.0, max_tokens=32)
    (labelled,) = efficient.label([Question("q", Q, (), "10", [WRONG])])
    assert labelled[0].labels == [False, False]
    # Each probed prefix: 3 fresh samples (its own rollout's failed remainder is not one of them).
    assert sorted(policy.calls) == sorted([(WRONG.steps[0], 1)] * 3 + [(WRONG.steps[1], 1)] * 3)


def test_local_pair_marks_the_first_step_that_differs() -> None:
    steps = ["3 * 4 = 12 apples.", "12 - 3 = 9 apples."]
    script = {steps[0]: ["12 - 2 = 10 apples.\n#### 10"], steps[1]: ["9 + 0 = 9\n#### 9"]}
    question = Question("q", Q, (), "10", [rollout("q/r0", steps, "9", False)])
    (labelled,) = labeller("exhaustive", script).label([question])
    assert labelled[0].labels == [True, False]
    pair = local_pair(sorm_row(question, labelled[0]))
    assert pair["bad_step"] == 1 and pair["draft_steps"][:1] == steps[:1]
    assert pair["draft_steps"][1] == "12 - 3 = 9 apples." and pair["target"] == "12 - 2 = 10 apples.\n#### 10"
    prompt = local_refine_prompt(Q, pair["draft_steps"], pair["bad_step"])
    assert f"{steps[0]}\n{BAD_MARK} {steps[1]}" in prompt


def test_a_wrong_rollout_with_every_step_labelled_good_makes_no_local_pair() -> None:
    """Its first negative label is past its last step: the refiner has no step to start from (a
    pair marking step len(steps) stopped the local refiner's training on the organism benchmark)."""
    steps = ["3 * 4 = 12 apples.", "12 - 2 = 10 apples."]
    wrong = rollout("q/r0", steps, "11", False)
    question = Question("q", Q, (), "10", [wrong])
    labelled = LabelledRollout(wrong, [True, True], pos_continuation="#### 10", neg_continuation="#### 11")
    assert local_pair(sorm_row(question, labelled)) is None
    labelled = LabelledRollout(wrong, [True, False], "12 - 2 = 10 apples.\n#### 10", "#### 11")
    assert local_pair(sorm_row(question, labelled)) is not None


def test_balance_weights_keep_every_label_and_even_every_step_index() -> None:
    rng = random.Random(1)
    rows = [propagate([rng.random() < 0.6 for _ in range(rng.randint(1, 6))]) for _ in range(400)]
    weights = balance_weights(step_label_counts(rows))
    per_row = [row_weights(r, weights) for r in rows]
    assert all(len(w) == len(r) and all(x > 0 for x in w) for w, r in zip(per_row, rows))  # nothing dropped
    for i in range(6):
        at_i = [(r[i], w[i]) for r, w in zip(rows, per_row) if len(r) > i]
        positive = sum(w for label, w in at_i if label)
        negative = sum(w for label, w in at_i if not label)
        if positive and negative:
            assert positive == pytest.approx(negative)  # labels balanced at every index
        assert positive + negative == pytest.approx(len(at_i))  # and every index keeps its weight
    # An index with one label only keeps it at weight 1 (cutting dropped such rows).
    assert balance_weights(step_label_counts([[True, True], [True, False], [True]])) == {
        (0, True): 1.0, (1, True): 1.0, (1, False): 1.0}


def test_held_out_questions_are_a_stable_share_by_id() -> None:
    ids = [f"train-{i}" for i in range(5000)]
    held = [i for i in ids if is_heldout(i, 0.1)]
    assert 400 < len(held) < 600 and held == [i for i in ids if is_heldout(i, 0.1)]
    assert set(held) <= {i for i in ids if is_heldout(i, 0.3)}  # a larger share holds out a superset


def test_global_pairs_pair_each_wrong_rollout_with_a_right_one() -> None:
    pairs = global_pairs(Question("q", Q, (), "10", [RIGHT, WRONG]))
    assert pairs == [{"id": "q/r1/global", "question": Q, "draft": WRONG.text, "target": RIGHT.text}]
    assert global_pairs(Question("q", Q, (), "10", [WRONG])) == []


def test_reference_targets_pair_a_question_the_policy_never_solves_with_its_reference_solution() -> None:
    question = Question("q", Q, ("3 * 4 = 12 apples.", "12 - 2 = 10 apples."), "10", [WRONG])
    assert global_pairs(question, reference_targets=True) == [
        {"id": "q/r1/global-reference", "question": Q, "draft": WRONG.text, "target": RIGHT.text}]
    # A question the policy solves keeps the policy's own right rollout; one without a reference makes none.
    solved = Question("q", Q, question.steps, "10", [RIGHT, WRONG])
    assert global_pairs(solved, reference_targets=True) == global_pairs(solved)
    assert global_pairs(Question("q", Q, (), "10", [WRONG]), reference_targets=True) == []


def test_identity_pairs_keep_a_share_of_right_rollouts_as_written() -> None:
    question = Question("q", Q, (), "10", [RIGHT, WRONG])
    pairs = global_pairs(question, identity_share=1.0)
    assert pairs[-1] == {"id": "q/r0/global-identity", "question": Q, "draft": RIGHT.text, "target": RIGHT.text}
    assert global_pairs(question, identity_share=0.0) == global_pairs(question)  # the default: none
    right = sorm_row(question, LabelledRollout(RIGHT, [True, True]))
    pair = local_pair(right, identity_share=1.0)
    # Marked at one of its reasoning steps, continued as written: the answer line is never marked.
    f = pair["bad_step"]
    assert pair["draft_steps"] == RIGHT.steps and 0 <= f < len(RIGHT.steps)
    assert "\n".join(RIGHT.steps[:f] + [pair["target"]]) == RIGHT.text
    assert local_pair(right) is None
    # A wrong rollout without an answer line can have every step labelled good: it is not right.
    unfinished = Rollout("q/r2", RIGHT.steps, "\n".join(RIGHT.steps), False)
    assert local_pair(sorm_row(question, LabelledRollout(unfinished, [True, True])), identity_share=1.0) is None


def test_rollouts_are_graded_and_deduplicated() -> None:
    problem = Problem("p1", Q, ("3 * 4 = 12 apples.", "12 - 2 = 10 apples."), "10")
    texts = [RIGHT.text, RIGHT.text + "\n", WRONG.text, "no steps"]
    row = grade_rollouts(problem, Generation("", 5, [Completion(t, 7, "stop") for t in texts]))
    assert row["n_samples"] == 4 and [r["count"] for r in row["rollouts"]] == [2, 1, 1]
    assert [r["correct"] for r in row["rollouts"]] == [True, False, False]
    assert [r["id"] for r in row["rollouts"]] == ["p1/r0", "p1/r1", "p1/r2"]


def test_the_greedy_solution_joins_the_rollouts_without_counting_as_a_sample() -> None:
    problem = Problem("p1", Q, ("3 * 4 = 12 apples.", "12 - 2 = 10 apples."), "10")
    samples = Generation("", 5, [Completion(t, 7, "stop") for t in (WRONG.text, WRONG.text)])
    row = grade_rollouts(problem, samples, greedy=Generation("", 5, [Completion(RIGHT.text, 7, "stop")]))
    assert row["n_samples"] == 2
    assert [(r["count"], r["greedy"], r["correct"]) for r in row["rollouts"]] == [(2, False, False), (0, True, True)]
    again = grade_rollouts(problem, samples, greedy=Generation("", 5, [Completion(WRONG.text, 7, "stop")]))
    assert [(r["count"], r["greedy"]) for r in again["rollouts"]] == [(2, True)]  # greedy equal to a sample


def test_reward_model_rows_end_with_the_answer_line_labelled_by_correctness() -> None:
    assert reward_model_row(WRONG, [True, False]) == ([*WRONG.steps, "#### 11"], [True, False, False])
    # A correct answer is a good continuation of every prefix: earlier labels turn positive.
    assert reward_model_row(RIGHT, [False, False]) == ([*RIGHT.steps, "#### 10"], [True, True, True])
    unfinished = Rollout("q/r3", ["3 * 4 = 12 apples."], "3 * 4 = 12 apples.", False)
    assert reward_model_row(unfinished, [True]) == (["3 * 4 = 12 apples."], [True])


def test_orm_rows_score_the_answer_line() -> None:
    import pyarrow as pa

    from glore_ray.pipeline.labels import orm_rows

    same_steps = Rollout("q/r2", RIGHT.steps, "\n".join(RIGHT.steps + ["#### 11"]), False)
    rollouts = [{"id": r.id, "text": r.text, "steps": r.steps, "correct": r.correct, "first_wrong": None}
                for r in (RIGHT, same_steps)]
    rows = orm_rows(pa.Table.from_pylist([{"id": "q", "question": Q, "step_truth": False,
                                            "rollouts": rollouts}])).to_pylist()
    assert [r["completions"][-1] for r in rows] == ["#### 10", "#### 11"]
    assert [r["labels"] for r in rows] == [[True] * 3, [False] * 3]


def test_continuation_prompt_ends_with_the_prefix() -> None:
    assert continuation_prompt(Q, ["a = 1."]).endswith("Answer:\na = 1.\n")
