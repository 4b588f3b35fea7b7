"""The refiners' levers side by side (issue 26, part 1): validation evaluations of one run's models
that differ only in the refiners' pairs and the ensemble's settings.

    .venv/bin/python bench/refiner_study.py LABEL=RUN_DIR [LABEL=RUN_DIR ...] [--name refiner_study]

Each RUN_DIR is a pipeline run evaluated with `eval.split=validation` on the same questions (the
script refuses a test-split run and runs of different questions). For each: every refinement
method's accuracy, the share of wrong drafts it fixes and of right drafts it breaks, the rerank's
capture of the oracle and how often it kept the draft, and the pairs the refiners trained on.
Copies each run's report.md beside the results (bench/results/organism/<name>/<label>.md) and
writes bench/results/<name>.json (flat keys `<label>_<method>_<column>`).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.results_table import RESULTS, publish  # noqa: E402

METHODS = ("greedy", "global", "local", "local_orm", "local_oracle_where", "global_local_rerank", "rerank_oracle")


def study(label: str, run: Path) -> dict:
    report = json.loads((run / "report.json").read_text())
    if report["split"] != "validation":
        sys.exit(f"{run / 'report.json'}: split {report['split']!r}; compare levers on eval.split=validation")
    refinement, out = report["refinement"], {f"{label}_questions": report["n_test"]}
    for method in METHODS:
        out |= {f"{label}_{method}_{column}": refinement[method][column] for column in ("accuracy", "fixed", "broken")}
    rerank = refinement["global_local_rerank"]
    out |= {f"{label}_rerank_capture": rerank["rerank_capture"], f"{label}_kept_draft": rerank["kept_draft"],
            f"{label}_step_threshold": report["settings"]["step_threshold"]}
    pairs = json.loads((run / "pairs" / "manifest.json").read_text())["counts"]
    out |= {f"{label}_{key}": value for key, value in pairs.items() if key.endswith("pairs")}
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("runs", nargs="+", metavar="LABEL=RUN_DIR")
    parser.add_argument("--name", default="refiner_study")
    args = parser.parse_args()
    results: dict = {}
    reports = RESULTS / "organism" / args.name
    reports.mkdir(parents=True, exist_ok=True)
    for spec in args.runs:
        label, _, run = spec.partition("=")
        results |= study(label, Path(run))
        shutil.copy(Path(run) / "report.md", reports / f"{label}.md")
    sizes = {v for k, v in results.items() if k.endswith("_questions")}
    if len(sizes) != 1:
        sys.exit(f"the runs evaluated different numbers of questions ({sorted(sizes)}): not comparable")
    publish(args.name, {k: round(v, 4) if isinstance(v, float) else v for k, v in results.items()})


if __name__ == "__main__":
    main()
