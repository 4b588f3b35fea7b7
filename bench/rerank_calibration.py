"""The ensemble's decisions calibrated on a VALIDATION evaluation (issue 26): where each reward
model's step values say a draft goes wrong, and the rerank per candidate source.

    .venv/bin/python bench/rerank_calibration.py RUN_DIR [--name rerank_calibration]

RUN_DIR is a pipeline run whose evaluation ran with `eval.split=validation`: its
`evaluate/decisions.jsonl` holds each question's draft and refinements with every reward model's
scores. No model runs: both choices are replayed from the recorded scores.

- **Step threshold** ("where"; `ensemble.step_threshold` for the SORM, `ensemble.orm_step_threshold` for
  the ORM baseline): the threshold on a grid of 0.05 .. 0.95 whose first step below it best finds
  the first wrong step of the greedy drafts (first-error F1 against the organism's exact truth, the
  ensemble's rule: reasoning steps only), ties to the one nearest 0.5. An implicit PRM's values
  start at sigmoid(0) = 0.5, so a value head's 0.5 flags most right drafts.
- **Offsets**: for each reward model, a grid search over the offsets added to the global and the
  local refinement's logit (`ensemble.global_offset`, `ensemble.local_offset`; the draft's is 0) for the
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
from glore_ray.core.calibration import calibrate, calibrate_where, rounded  # noqa: E402


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
                        **calibrate(records), **rounded(calibrate_where(records))})


if __name__ == "__main__":
    main()
