"""The report's arithmetic on hand-built evaluation records: Wilson intervals, the refinement
table's accuracy and fixed/broken shares, reward-model step and final accuracy, and the files."""

from __future__ import annotations

import json

import pytest

from glore_ray.core.report import build_report, refinement_table, rerank_by, reward_model_metrics
from glore_ray.core.report_markdown import write_report
from glore_ray.core.stats import auroc, paired_bootstrap, wilson_interval


def record(draft: bool, best: bool, global_: bool, local: bool, local_orm: bool, chosen: bool,
           solutions: list[dict] | None = None, step_truth: bool = True) -> dict:
    return {"step_truth": step_truth, "solutions": solutions or [
                {"correct": draft, "first_wrong": None if draft else 1, "orm": [0.9, 0.8], "sorm": [0.9, 0.2]}],
            "correct": {"draft": draft, "best_of_k": best, "best_of_k_with_greedy": best or draft, "global": global_,
                        "local": local, "local_orm": local_orm, "local_oracle_where": local if step_truth else None,
                        "chosen": chosen},
            "decision": {"chosen": "draft", "refined": True, "first_bad_step": 1}}


def test_wilson_interval_matches_the_closed_form() -> None:
    lo, hi = wilson_interval(50, 100)
    assert lo == pytest.approx(0.4038, abs=1e-4) and hi == pytest.approx(0.5962, abs=1e-4)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == 1.0
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_auroc_is_the_chance_a_correct_solution_outranks_a_wrong_one() -> None:
    assert auroc([0.9, 0.8, 0.1, 0.2], [True, True, False, False]) == 1.0
    assert auroc([0.1, 0.9], [True, False]) == 0.0
    assert auroc([0.5, 0.5, 0.5], [True, False, False]) == 0.5  # ties count half
    assert auroc([0.3, 0.5, 0.7], [True, False, True]) == 0.5
    assert auroc([0.3, 0.4], [True, True]) is None


def test_refinement_table_counts_fixed_and_broken_drafts() -> None:
    records = [record(False, False, True, False, False, True),   # global fixes a wrong draft; rerank keeps it
               record(False, True, False, True, False, False),   # local fixes it; rerank picks wrong
               record(True, True, False, True, True, True),      # global breaks a right draft
               record(True, True, True, True, True, True)]
    table = refinement_table(records)
    assert table["greedy"]["accuracy"] == 0.5 and table["greedy"]["fixed"] == 0.0
    assert table["global"]["accuracy"] == 0.5
    assert table["global"]["fixed"] == 0.5 and table["global"]["broken"] == 0.5
    assert table["local"]["fixed"] == 0.5 and table["local"]["broken"] == 0.0
    assert table["global_local_rerank"]["accuracy"] == 0.75
    assert table["rerank_oracle"]["accuracy"] == 1.0 and table["rerank_oracle"]["fixed"] == 1.0
    assert table["best_of_k"]["correct"] == 3
    # Paired with greedy question by question: global fixes one draft and breaks another.
    assert table["global"]["paired_diff_vs_greedy"]["mean"] == 0.0
    assert table["rerank_oracle"]["paired_diff_vs_greedy"]["mean"] == 0.5


def test_a_method_not_measured_on_every_question_has_no_row() -> None:
    table = refinement_table([record(True, True, True, True, True, True, step_truth=False)])
    assert "local_oracle_where" not in table and "local" in table


def test_the_paired_bootstrap_interval_excludes_zero_only_for_a_consistent_gain() -> None:
    baseline = [False] * 100 + [True] * 100
    gain = paired_bootstrap([True] * 30 + [False] * 70 + [True] * 100, baseline)
    assert gain["mean"] == pytest.approx(0.15) and 0.09 < gain["low"] < 0.15 < gain["high"] < 0.21
    # The same 30 fixes with 28 breaks: a mean near zero whose interval spans it.
    churn = paired_bootstrap([True] * 30 + [False] * 70 + [False] * 28 + [True] * 72, baseline)
    assert churn["low"] < 0 < churn["high"]
    assert paired_bootstrap([True, False], [False, True], seed=3) == paired_bootstrap([True, False], [False, True],
                                                                                     seed=3)


def test_reward_model_accuracy_uses_exact_step_truth_or_the_final_answer() -> None:
    # Wrong at step 1 of 2: exact truth is [good, bad]; the SORM says [0.9, 0.2] (both right), the
    # ORM [0.9, 0.8] (second wrong, and its final call wrong).
    wrong = {"correct": False, "first_wrong": 1, "orm": [0.9, 0.8], "sorm": [0.9, 0.2]}
    exact = [record(False, False, False, False, False, False, [wrong])]
    assert reward_model_metrics(exact, "sorm")["step_accuracy"] == 1.0
    assert reward_model_metrics(exact, "orm")["step_accuracy"] == 0.5
    assert reward_model_metrics(exact, "orm")["final_accuracy"] == 0.0
    # Without step truth (GSM8K), every step of a wrong solution counts as bad.
    final_only = [record(False, False, False, False, False, False, [wrong], step_truth=False)]
    assert reward_model_metrics(final_only, "sorm")["step_accuracy"] == 0.5
    calibration = reward_model_metrics(exact, "orm")["calibration"]
    assert calibration == [{"bin": 0.8, "count": 1, "mean_value": 0.8, "accuracy": 0.0}]


def solution(correct: bool, first_wrong: int | None, orm: list[float]) -> dict:
    return {"correct": correct, "first_wrong": first_wrong, "orm": orm}


def test_balanced_step_accuracy_first_error_f1_and_within_question_auroc() -> None:
    # Question 1: a right solution the ORM ranks below a wrong one; question 2: the reverse.
    q1 = [solution(True, None, [0.9, 0.4]), solution(False, 1, [0.9, 0.6])]
    q2 = [solution(True, None, [0.8, 0.9]), solution(False, 0, [0.3, 0.2])]
    records = [record(True, True, True, True, True, True, q1), record(True, True, True, True, True, True, q2)]
    m = reward_model_metrics(records, "orm")
    # Good steps: 0.9, 0.4, 0.9 (q1 wrong, step 0), 0.8, 0.9 -> 4 of 5 right; bad: 0.6, 0.3, 0.2 -> 2 of 3.
    assert m["step_accuracy"] == pytest.approx(6 / 8)
    assert m["balanced_step_accuracy"] == pytest.approx((4 / 5 + 2 / 3) / 2)
    # Wrong solutions: q1's flags nothing (miss), q2's flags step 0 (hit): 1/2. Right solutions: q1's
    # flags step 1 (a false alarm), q2's nothing: 1/2. F1 = 1/2.
    assert m["first_error_f1"] == pytest.approx(0.5)
    # Pooled, the right solutions' finals (0.4, 0.9) against the wrong (0.6, 0.2) give 3 of 4 pairs;
    # within questions, only 1 of 2.
    assert m["final_auroc"] == pytest.approx(0.75) and m["within_question_auroc"] == pytest.approx(0.5)
    assert m["within_question_pairs"] == 2
    final_only = [record(True, True, True, True, True, True, q1, step_truth=False)]
    assert reward_model_metrics(final_only, "orm")["first_error_f1"] is None


def test_report_files_name_best_of_k_by_its_k(tmp_path) -> None:
    records = [record(True, True, True, True, True, True), record(False, False, True, False, False, True)]
    report = build_report(records, k=3, settings={"always_refine": True}, run_name="unit")
    files = write_report(report, tmp_path)
    assert [f.name for f in files] == ["report.json", "report.md", "calibration.png", "refinement.png"]
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["n_test"] == 2 and data["refinement"]["best_of_3"]["accuracy"] == 0.5
    assert data["refinement"]["best_of_3_with_greedy"]["accuracy"] == 0.5
    assert not [m for m in data["refinement"] if "best_of_k" in m]
    assert "| ORM-reranked best of 3 samples | 50.0 |" in (tmp_path / "report.md").read_text()


def test_every_refinement_round_is_a_row_with_the_share_of_the_pass_at_k_gap_it_closes() -> None:
    def with_rounds(draft: bool, sample: bool, rounds: list[bool]) -> dict:
        r = record(draft, sample, False, False, False, rounds[0])
        r["solutions"] += [{"correct": sample, "first_wrong": None, "orm": [0.5], "sorm": [0.5]}]
        r["correct"]["rounds"] = rounds
        return r

    # greedy 1/4, pass@k 3/4; round 1 solves 2/4, round 2 3/4.
    records = [with_rounds(True, True, [True, True]), with_rounds(False, True, [True, True]),
               with_rounds(False, True, [False, True]), with_rounds(False, False, [False, False])]
    report = build_report(records, k=1, settings={}, run_name="t")
    assert report["refinement"]["round_2"]["accuracy"] == 0.75 and "round_1" not in report["refinement"]
    assert report["iteration"]["round_1"] == {"accuracy": 0.5, "gap_closed": 0.5}
    assert report["iteration"]["round_2"] == {"accuracy": 0.75, "gap_closed": 1.0}


def candidate(text: str, correct: bool, orm: list[float], first_wrong: int | None = None,
              error_kind: str | None = None) -> dict:
    return {"text": text, "correct": correct, "first_wrong": first_wrong, "error_kind": error_kind, "orm": orm}


def test_reward_models_are_measured_on_the_candidates_the_ensemble_ranks() -> None:
    # q1: a wrong draft the ORM ranks above its right global refinement (a failed rescue), and a
    # local refinement identical to the draft (the same candidate, not a pair of its own).
    q1 = record(False, False, True, False, False, False,
                [candidate("d1", False, [0.2, 0.9], 0, "arithmetic"), candidate("s1", True, [0.9, 0.5])])
    q1["candidates"] = {"global": candidate("g1", True, [0.9, 0.6]), "local": candidate("d1", False, [0.2, 0.9], 0)}
    # q2: a right draft above its wrong local refinement; a sample wrong by its plan.
    q2 = record(True, True, False, False, False, True,
                [candidate("d2", True, [0.8, 0.7]), candidate("s2", False, [0.1, 0.8], 0, "wrong_plan")])
    q2["candidates"] = {"local": candidate("l2", False, [0.7, 0.3], 1, "arithmetic")}
    m = reward_model_metrics([q1, q2], "orm")
    assert (m["candidate_auroc"], m["candidate_pairs"]) == (0.5, 2)  # q1's pair lost, q2's won
    assert (m["rescue_auroc"], m["rescue_pairs"]) == (0.0, 1)  # only q1's is a wrong draft's rescue
    assert m["draft_auroc"] == 0.0  # the wrong draft (0.9) above the right one (0.7)
    # Drafts: q1's flags step 0 = its first wrong step (hit); q2's flags nothing (right): F1 1.
    assert m["draft_first_error_f1"] == 1.0
    assert m["within_question_auroc_by_error_kind"] == {"arithmetic": {"auroc": 0.0, "pairs": 1},
                                                        "wrong_plan": {"auroc": 0.0, "pairs": 1}}


def test_the_rerank_row_says_what_share_of_the_oracle_it_took_and_how_often_it_kept_the_draft() -> None:
    records = [record(False, False, True, False, False, False),  # kept a wrong draft a refinement fixed
               record(False, False, False, True, False, True),   # took the right local refinement
               record(True, True, True, True, True, True)]
    records[1]["decision"]["chosen"] = "local"
    row = refinement_table(records)["global_local_rerank"]
    # greedy 1/3, rerank 2/3, oracle 3/3: half the oracle's gain.
    assert row["rerank_capture"] == pytest.approx(0.5)
    assert (row["kept_draft"], row["kept_wrong_draft"]) == (2, 1)


def test_rerank_by_replays_the_choice_under_each_reward_model_with_ties_to_the_draft() -> None:
    def scored(text: str, correct: bool, orm: float, prm: float) -> dict:
        return {"text": text, "correct": correct, "first_wrong": None if correct else 0, "orm": [orm], "prm": [prm]}

    # q1: a wrong draft; the PRM prefers the right global refinement, the ORM the draft.
    q1 = record(False, False, True, False, False, False, [scored("d1", False, 0.9, 0.2)])
    q1["candidates"] = {"global": scored("g1", True, 0.5, 0.8), "local": scored("l1", False, 0.1, 0.1)}
    # q2: a right draft and a wrong local refinement the ORM ties with it (within SCORE_TIE): the draft stays.
    q2 = record(True, True, False, False, False, True, [scored("d2", True, 0.7, 0.6)])
    q2["candidates"] = {"local": scored("l2", False, 0.7 + 1e-7, 0.9)}
    records = [q1, q2]
    by = rerank_by(records, refinement_table(records))
    assert set(by) == {"orm", "prm"}
    # greedy 1/2, oracle 2/2. ORM: keeps both drafts (1/2, capture 0); PRM: takes g1 (right) and l2 (wrong).
    assert (by["orm"]["accuracy"], by["orm"]["rerank_capture"], by["orm"]["kept_draft"]) == (0.5, 0.0, 2)
    assert (by["prm"]["accuracy"], by["prm"]["rerank_capture"], by["prm"]["kept_draft"]) == (0.5, 0.0, 0)
    q2["candidates"]["local"]["prm"] = [0.5]
    by = rerank_by(records, refinement_table(records))
    assert (by["prm"]["accuracy"], by["prm"]["rerank_capture"], by["prm"]["kept_draft"]) == (1.0, 1.0, 1)
    assert by["prm"]["paired_diff_vs_greedy"]["mean"] == pytest.approx(0.5)


def test_rerank_calibration_finds_the_smallest_offset_that_undoes_a_sources_bias() -> None:
    from glore_ray.core.calibration import calibrate

    def question(draft_right: bool) -> dict:
        # The global refinement always outscores the draft (0.5): 0.9 when it is right, 0.7 when wrong.
        return {"solutions": [{"correct": draft_right, "prm": [0.5]}],
                "candidates": {"global": {"correct": not draft_right, "prm": [0.7 if draft_right else 0.9]}},
                "correct": {"draft": draft_right, "global": not draft_right, "local": False}}

    out = calibrate([question(i % 4 != 0) for i in range(40)])
    assert (out["greedy_accuracy"], out["rerank_oracle_accuracy"]) == (0.75, 1.0)
    assert out["prm_uncalibrated_accuracy"] == 0.25  # always the refinement
    # logit(0.7) = 0.85 and logit(0.9) = 2.20: -1.0 is the smallest offset between them on the grid.
    assert (out["prm_global_offset"], out["prm_local_offset"], out["prm_fit_accuracy"]) == (-1.0, 0.0, 1.0)
    assert out["prm_cv_accuracy"] == 1.0 and out["prm_kept_draft"] == 30
    assert "orm_fit_accuracy" not in out  # a model that scored nothing is left out


def test_where_calibration_picks_the_step_threshold_that_finds_the_first_wrong_step() -> None:
    from glore_ray.core.calibration import calibrate_where

    def question(i: int) -> dict:
        # Every reasoning step of a right draft reads 0.3 (a value head's 0.5 flags them all); a
        # wrong draft's first wrong step (1) reads 0.05. The answer line's value is never a step.
        right = i % 4 < 2
        values = [0.3, 0.3, 0.01] if right else [0.3, 0.05, 0.3, 0.9]
        text = "a = 1\nb = 2\n#### 2" if right else "a = 1\nb = 3\nc = 4\n#### 4"
        return {"step_truth": True, "solutions": [{"text": text, "correct": right, "first_wrong": None if right else 1,
                                                   "sorm": values}]}

    out = calibrate_where([question(i) for i in range(20)])
    assert out["sorm_first_error_f1_at_0.5"] == 0.0
    # Any threshold in (0.05, 0.3] is perfect on the grid; the nearest 0.5 is 0.3.
    assert (out["sorm_step_threshold"], out["sorm_fit_first_error_f1"], out["sorm_cv_first_error_f1"]) == (0.3, 1.0, 1.0)
    assert "orm_step_threshold" not in out  # a model with no step values is left out


def test_the_last_screen_says_when_a_short_run_leaves_the_global_refiner_below_greedy() -> None:
    from glore_ray.config import GloreConfig
    from glore_ray.pipeline.closing import short_run_notes

    def report(low: float, high: float) -> dict:
        return {"refinement": {"global": {"broken": 0.75, "paired_diff_vs_greedy": {
            "mean": (low + high) / 2, "low": low, "high": high}}}}

    (blank, note) = short_run_notes(GloreConfig(), report(-0.40, -0.30))
    assert blank == "" and "global refiner (60 steps) is -35.0 points" in note and "75%" in note
    assert "bench/results/organism/report.md" in note
    assert short_run_notes(GloreConfig(), report(-0.04, 0.01)) == []  # level with greedy within its interval
    assert short_run_notes(GloreConfig(), {}) == []
