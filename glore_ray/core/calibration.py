"""The ensemble's decisions calibrated on a validation evaluation's recorded scores (no model runs):
where each reward model's step values say a draft goes wrong (its step threshold), and the rerank's
offsets per candidate source. Each choice is also fitted on one half of the questions and scored on
the other (2-fold, both ways): the honest estimate of what the fit buys. `bench/rerank_calibration.py`
runs it on a run directory and publishes the table.
"""

from __future__ import annotations

from glore_ray.config.ensemble import EVAL_SCORERS, REPORT_STEP_THRESHOLD, EnsembleSettings
from glore_ray.core.grading import split_steps
from glore_ray.core.report import oracle_right, replay_choice
from glore_ray.core.stats import first_error_f1

GRID = [x / 4 for x in range(-16, 17)]  # offsets in logit units, -4 .. 4
THRESHOLDS = [x / 20 for x in range(1, 20)]  # step thresholds, 0.05 .. 0.95


def where_f1(records: list[dict], model: str, threshold: float) -> float | None:
    """First-error F1 of "where" on the greedy drafts with exact step truth, by the ensemble's rule."""
    drafts = [r["solutions"][0] for r in records if r["step_truth"]]
    return first_error_f1([(d[model][:len(split_steps(d["text"]))], d["first_wrong"]) for d in drafts if d.get(model)],
                          threshold)


def best_threshold(records: list[dict], model: str) -> tuple[float, float]:
    """(threshold, F1) with the best first-error F1 on `records`; among equals, the nearest REPORT_STEP_THRESHOLD."""
    scored = [(where_f1(records, model, t) or 0.0, -abs(t - REPORT_STEP_THRESHOLD), t) for t in THRESHOLDS]
    f1, _, threshold = max(scored)
    return threshold, f1


def calibrate_where(records: list[dict]) -> dict:
    """Per reward model with step values on the drafts: the chosen step threshold, its F1 in-sample
    and 2-fold cross-validated, and the F1 at REPORT_STEP_THRESHOLD."""
    halves, out = (records[0::2], records[1::2]), {}
    for model in ("orm", "sorm", "prm"):  # the reranker's combination scores a solution, not its steps
        if where_f1(records, model, REPORT_STEP_THRESHOLD) is None:
            continue
        threshold, fit = best_threshold(records, model)
        held = [where_f1(test, model, best_threshold(train, model)[0]) or 0.0 for train, test in (halves, halves[::-1])]
        out |= {f"{model}_step_threshold": threshold, f"{model}_fit_first_error_f1": fit,
                f"{model}_cv_first_error_f1": sum(held) / 2,
                f"{model}_first_error_f1_at_{REPORT_STEP_THRESHOLD}": where_f1(records, model, REPORT_STEP_THRESHOLD)}
    return out


def accuracy(records: list[dict], model: str, settings: EnsembleSettings) -> float:
    return sum(replay_choice(r, model, settings)[1] for r in records) / len(records)


def best_offsets(records: list[dict], model: str) -> tuple[float, float, float]:
    """(global_offset, local_offset, accuracy) with the most right choices on `records`; among
    equals, the smallest offsets (0, 0 first: no calibration unless it pays)."""
    grid = sorted(((g, loc) for g in GRID for loc in GRID), key=lambda o: (abs(o[0]) + abs(o[1]), o))
    best, best_accuracy = grid[0], -1.0
    for g, loc in grid:
        value = accuracy(records, model, EnsembleSettings(global_offset=g, local_offset=loc))
        if value > best_accuracy:
            best, best_accuracy = (g, loc), value
    return *best, best_accuracy


def calibrate(records: list[dict]) -> dict:
    """Per reward model scored on every draft: its rerank's accuracy uncalibrated, the fitted
    offsets and their accuracy in-sample and 2-fold cross-validated, and the drafts kept."""
    halves = records[0::2], records[1::2]
    out: dict = {"questions": len(records),
                 "greedy_accuracy": sum(r["correct"]["draft"] for r in records) / len(records),
                 "rerank_oracle_accuracy": sum(oracle_right(r["correct"]) for r in records) / len(records)}
    for model in EVAL_SCORERS:
        if any(replay_choice(r, model) is None for r in records):
            continue
        g, loc, fit = best_offsets(records, model)
        held = 0
        for train, test in (halves, halves[::-1]):
            tg, tl, _ = best_offsets(train, model)
            held += accuracy(test, model, EnsembleSettings(global_offset=tg, local_offset=tl)) * len(test)
        fitted = EnsembleSettings(global_offset=g, local_offset=loc)
        out |= {f"{model}_uncalibrated_accuracy": accuracy(records, model, EnsembleSettings()),
                f"{model}_global_offset": g, f"{model}_local_offset": loc, f"{model}_fit_accuracy": fit,
                f"{model}_cv_accuracy": held / len(records),
                f"{model}_kept_draft": sum(replay_choice(r, model, fitted)[0] == "draft" for r in records)}
    return rounded(out)


def rounded(values: dict) -> dict:
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in values.items()}
