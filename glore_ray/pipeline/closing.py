"""The end of a finished run: its report at the run's root, completed with what the evaluation does
not see (the training labels' quality, models left untrained), and the last lines on screen."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from glore_ray.config import GloreConfig
from glore_ray.layout import RunLayout
from glore_ray.pipeline.manifest import MANIFEST, read_json


def short_run_notes(cfg: GloreConfig, report: dict) -> list[str]:
    """A line for the global refiner when it is surely below greedy (its paired interval under 0):
    a short fine-tune learns to change a draft before it learns when not to, and the reader should
    know that this run did not buy that link, and where one that did is measured."""
    row = report.get("refinement", {}).get("global")
    if not row or row["paired_diff_vs_greedy"]["high"] >= 0:
        return []
    diff = row["paired_diff_vs_greedy"]
    return ["", f"note: the global refiner ({cfg.global_refiner.steps} steps) is {100 * diff['mean']:+.1f} points "
                f"against greedy here ({100 * diff['low']:+.1f} to {100 * diff['high']:+.1f}; it breaks "
                f"{100 * row['broken']:.0f}% of the right drafts it rewrites): this run's budget does not train it; "
                f"the organism benchmark's longer run (cluster/configs/organism-benchmark.yaml) brings it level with "
                f"greedy within its interval: bench/results/organism/report.md"]


def closing_lines(cfg: GloreConfig, out: Path) -> str:
    """The end of a finished run: the report's tables, where the plots are, and the commands that
    serve the trained ensemble and ask it the first evaluated question."""
    import os
    import shlex

    md = [line for line in (out / "report.md").read_text().splitlines() if not line.startswith("![")]
    md += short_run_notes(cfg, json.loads((out / "report.json").read_text()))
    plots = sorted(str(p) for p in out.glob("*.png"))
    with open(RunLayout(str(out)).split(cfg.eval.split)) as f:
        question = json.loads(f.readline())["question"]
    token = f' -H "Authorization: Bearer ${cfg.serve.token_env}"' if os.environ.get(cfg.serve.token_env) else ""
    host = "127.0.0.1" if cfg.serve.host == "0.0.0.0" else cfg.serve.host
    return "\n".join([*md, f"plots: {', '.join(plots)}", "",
                      "next: serve the trained ensemble (Ray Serve), then ask it a question:",
                      f"  glore serve --models {shlex.quote(str(out))}",
                      f"  curl -s http://{host}:{cfg.serve.port}/v1/solve{token} -H 'Content-Type: application/json' "
                      f"-d {shlex.quote(json.dumps({'question': question}))}"])


LABEL_GATE = 0.10
"""SORM training labels should beat ORM labels against exact truth by this much on the same rows
before the reward models' results mean much (the organism benchmark's protocol)."""


def training_label_quality(out: Path) -> dict:
    """The ORM's and SORM's training labels against exact truth on the same rows (from the label
    stages' manifests), and whether the SORM's beat the ORM's by LABEL_GATE."""
    quality, run = {}, RunLayout(str(out))
    for kind in ("orm", "sorm"):
        counts = (read_json(Path(run.stage(f"{kind}_labels")) / MANIFEST) or {}).get("counts", {})
        if counts.get("step_accuracy") is not None:
            quality[kind] = {k: counts.get(k) for k in ("step_accuracy", "bad_labelled_good", "checked")}
    if len(quality) == 2:
        margin = quality["sorm"]["step_accuracy"] - quality["orm"]["step_accuracy"]
        quality["sorm_minus_orm"] = round(margin, 4)
        quality["gate_passed"] = margin >= LABEL_GATE
    return quality


def finish_report(out: Path, names: list[str]) -> dict:
    """The run's report at its root: the evaluation's (from its stage directory), with what the
    evaluation does not see: the training labels' quality against exact truth, and the models that
    had no training rows (kept untrained), where a reader of the numbers sees them."""
    evaluated = Path(RunLayout(str(out)).stage("evaluate"))
    for written in [*evaluated.glob("report.*"), *evaluated.glob("*.png")]:
        shutil.copy2(written, out / written.name)
    report = json.loads((out / "report.json").read_text())
    labels = training_label_quality(out)
    warnings = [f"{name}: no training rows; the evaluation used the untrained initial model"
                for name in names if (read_json(out / name / MANIFEST) or {}).get("counts", {}).get("untrained")]
    if labels.get("gate_passed") is False:
        warnings.append(f"training labels: the SORM's beat the ORM's by {100 * labels['sorm_minus_orm']:.1f} points "
                        f"against exact truth, under the {100 * LABEL_GATE:.0f}-point gate, so the SORM's edge over "
                        f"the ORM is the labels' to win first (README, 'The paper's findings, measured': in this "
                        f"regime few right answers follow a wrong step)")
    added = {"training_labels": labels} if labels else {}
    added |= {"warnings": warnings} if warnings else {}
    if any(report.get(k) != v for k, v in added.items()):
        report |= added
        (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
        md = (out / "report.md").read_text().split("\n## Training labels", 1)[0].split("\n## Warnings", 1)[0]
        if labels:
            md += ("\n## Training labels against exact truth (same rows)\n\n"
                   + "".join(f"- {k.upper()}: {100 * labels[k]['step_accuracy']:.1f}% of {labels[k]['checked']} steps "
                             f"right, {100 * (labels[k]['bad_labelled_good'] or 0):.1f}% of bad steps labelled good\n"
                             for k in ("orm", "sorm") if k in labels))
        if warnings:
            md += "\n## Warnings\n\n" + "".join(f"- {w}\n" for w in warnings)
        (out / "report.md").write_text(md)
    return report
