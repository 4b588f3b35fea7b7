"""The ensemble's decisions calibrated on a VALIDATION evaluation (issue 26): where each reward
model's step values say a draft goes wrong, and the rerank per candidate source.

    .venv/bin/python bench/rerank_calibration.py RUN_DIR [--name rerank_calibration]

RUN_DIR is a pipeline run whose evaluation ran with `eval.split=validation`: its
`evaluate/decisions.jsonl` holds each question's draft and refinements with every reward model's
scores. No model runs: both choices are replayed from the recorded scores.

- **Step threshold** ("where"; `eval.step_threshold` for the SORM, `eval.orm_step_threshold` for
  the ORM baseline): the threshold on a grid of 0.05 .. 0.95 whose first step below it best finds
  the first wrong step of the greedy drafts (first-error F1 against the organism's exact truth, the
  ensemble's rule: reasoning steps only), ties to the one nearest 0.5. An implicit PRM's values
  start at sigmoid(0) = 0.5, so a value head's 0.5 flags most right drafts.
- **Offsets**: for each reward model, a grid search over the offsets added to the global and the
  local refinement's logit (`eval.global_offset`, `eval.local_offset`; the draft's is 0) for the
  most right choices, ties to the smaller offsets (`report.replay_choice`). The local candidates
  are the ones the run made at its own step threshold (`run_step_threshold`): fit the offsets on
  a run evaluated at the chosen threshold.

Each choice also on one half of the questions scored on the other (2-fold, both ways): the honest
estimate of what the fit buys. Writes bench/results/<name>.json (flat keys `<model>_<column>`).
Refuses a test-split run: settings chosen on test would be read from the numbers they are quoted with.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.results_table import publish  # noqa: E402
from glore_ray.core.ensemble import EnsembleSettings  # noqa: E402
from glore_ray.core.grading import split_steps  # noqa: E402
from glore_ray.core.report import REWARD_MODELS, first_error_f1, oracle_right, replay_choice  # noqa: E402

GRID = [x / 4 for x in range(-16, 17)]  # offsets in logit units, -4 .. 4
THRESHOLDS = [x / 20 for x in range(1, 20)]  # step thresholds, 0.05 .. 0.95


def where_f1(records: list[dict], model: str, threshold: float) -> float | None:
    """First-error F1 of "where" on the greedy drafts with exact step truth, by the ensemble's rule."""
    drafts = [r["solutions"][0] for r in records if r["step_truth"]]
    return first_error_f1([(d[model][:len(split_steps(d["text"]))], d["first_wrong"]) for d in drafts if d.get(model)],
                          threshold)


def best_threshold(records: list[dict], model: str) -> tuple[float, float]:
    """(threshold, F1) with the best first-error F1 on `records`; among equals, the nearest 0.5."""
    scored = [(where_f1(records, model, t) or 0.0, -abs(t - 0.5), t) for t in THRESHOLDS]
    f1, _, threshold = max(scored)
    return threshold, f1


def calibrate_where(records: list[dict]) -> dict:
    """Per reward model with step values on the drafts: the chosen step threshold, its F1 in-sample
    and 2-fold cross-validated, and the F1 at 0.5."""
    halves, out = (records[0::2], records[1::2]), {}
    for model in ("orm", "sorm", "prm"):  # the reranker's combination scores a solution, not its steps
        if where_f1(records, model, 0.5) is None:
            continue
        threshold, fit = best_threshold(records, model)
        held = [where_f1(test, model, best_threshold(train, model)[0]) or 0.0 for train, test in (halves, halves[::-1])]
        out |= {f"{model}_step_threshold": threshold, f"{model}_fit_first_error_f1": fit,
                f"{model}_cv_first_error_f1": sum(held) / 2,
                f"{model}_first_error_f1_at_0.5": where_f1(records, model, 0.5)}
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
    for model in REWARD_MODELS:
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
    return _rounded(out)


def _rounded(values: dict) -> dict:
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in values.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run_dir")
    parser.add_argument("--name", default="rerank_calibration")
    args = parser.parse_args()
    run = Path(args.run_dir)
    report = json.loads((run / "report.json").read_text())
    if report["split"] != "validation":
        sys.exit(f"{run / 'report.json'}: split {report['split']!r}; calibrate on a run with eval.split=validation")
    records = [json.loads(line) for line in (run / "evaluate" / "decisions.jsonl").read_text().splitlines()]
    settings = report["settings"]
    publish(args.name, {"run": str(run), "split": report["split"], "ranked_by": settings.get("ranked_by", "orm"),
                        "run_step_threshold": settings["step_threshold"],
                        **calibrate(records), **_rounded(calibrate_where(records))})


if __name__ == "__main__":
    main()
