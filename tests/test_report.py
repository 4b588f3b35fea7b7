"""The report's arithmetic on hand-built evaluation records: Wilson intervals, the refinement
table's accuracy and fixed/broken shares, reward-model step and final accuracy, and the files."""

from __future__ import annotations

import json

import pytest

from glore_ray.report import (
    auroc,
    build_report,
    refinement_table,
    reward_model_metrics,
    wilson_interval,
    write_report,
)


def record(draft: bool, best: bool, global_: bool, local: bool, local_orm: bool, chosen: bool,
           solutions: list[dict] | None = None, step_truth: bool = True) -> dict:
    return {"step_truth": step_truth, "solutions": solutions or [
                {"correct": draft, "first_wrong": None if draft else 1, "orm": [0.9, 0.8], "sorm": [0.9, 0.2]}],
            "correct": {"draft": draft, "best_of_k": best, "global": global_, "local": local, "local_orm": local_orm,
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
    assert table["oracle"]["accuracy"] == 1.0 and table["oracle"]["fixed"] == 1.0
    assert table["best_of_k"]["correct"] == 3


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


def test_report_files_name_best_of_k_by_its_k(tmp_path) -> None:
    records = [record(True, True, True, True, True, True), record(False, False, True, False, False, True)]
    report = build_report(records, k=3, settings={"always_refine": True}, run_name="unit")
    files = write_report(report, tmp_path)
    assert [f.name for f in files] == ["report.json", "report.md", "calibration.png", "refinement.png"]
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["n_test"] == 2 and data["refinement"]["best_of_3"]["accuracy"] == 0.5
    assert "best_of_k" not in data["refinement"]
    assert "| ORM-reranked best of 3 samples | 50.0 |" in (tmp_path / "report.md").read_text()
