"""The pipeline runner: runs stages (`registry`) over a run directory, skipping what is up to date.

Each stage owns `<out>/<stage>/`; when it ends, the runner writes its `manifest.json` (the config
slice and input fingerprints it ran with, its counts, its wall time). A re-run skips a stage whose
manifest matches; a stage that started with the same config and inputs but has no manifest was
interrupted and resumes (training from its last Ray Train checkpoint); any other stage starts from
a clean directory, and the runner says what changed. `--from <stage>` re-runs that stage and
everything after it. Downstream stages see an upstream re-run through their input fingerprints.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from glore_ray.config import GloreConfig, result_config
from glore_ray.pipeline.manifest import MANIFEST, fingerprint, input_fingerprint, write_manifest

log = logging.getLogger(__name__)
STARTED = "started.json"


@dataclass
class Stage:
    name: str
    inputs: dict[str, str]
    """Paths the stage reads; their fingerprints are part of the manifest."""
    config: dict[str, Any]
    """The config slice the stage computes with; a change in its result fields re-runs it."""
    run: Callable[[str, str], dict]
    """(stage directory, run key) -> counts. The run key is stable across an interrupted stage's
    restarts, so Ray Train finds its checkpoints, and changes with the config or the inputs."""
    resumable: bool = False
    """Keeps an interrupted run's directory (Ray Train checkpoints); other stages restart clean."""
    work: tuple[str, float] | None = None
    """(unit, amount) the time estimate counts in, from the config: training examples, sampled
    solutions, labelled or evaluated questions; None for a short stage."""


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _signature(stage: Stage) -> dict:
    """What a stage's result depends on: its config slice without the EXECUTION fields (resources,
    replicas, logging, checkpoints, storage) and its inputs' fingerprints."""
    return {"config_hash": fingerprint(result_config(stage.config)),
            "inputs": {name: input_fingerprint(path) for name, path in stage.inputs.items()}}


def stage_state(stage: Stage, stage_dir: Path) -> tuple[str, dict]:
    """`done` (manifest matches), `resume` (started with this signature, no manifest) or `run`."""
    signature = _signature(stage)
    manifest = _read_json(stage_dir / MANIFEST)
    # Hashed from the manifest's own config slice, so a manifest written when every field was hashed
    # still matches.
    if manifest is not None and _manifest_signature(manifest) == signature:
        return "done", signature
    started = _read_json(stage_dir / STARTED)
    return ("resume" if manifest is None and started == signature else "run"), signature


def _manifest_signature(manifest: dict) -> dict:
    return {"config_hash": fingerprint(result_config(manifest.get("config"))),
            "inputs": {name: entry.get("hash") for name, entry in manifest.get("inputs", {}).items()}}


def _changes(old: Any, new: Any, key: str = "") -> list[str]:
    """The dotted keys whose result values differ between two config slices."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [c for k in sorted(set(old) | set(new)) for c in _changes(old.get(k), new.get(k), f"{key}.{k}" if key else k)]
    return [] if old == new else [key or "config"]


def why_rerun(stage: Stage, stage_dir: Path, signature: dict) -> str:
    """Why a stage with a manifest runs again: the config keys and the inputs that changed (against
    its signature now, `stage_state`'s)."""
    manifest = _read_json(stage_dir / MANIFEST)
    if manifest is None:
        return ""
    old_inputs = {name: entry.get("hash") for name, entry in manifest.get("inputs", {}).items()}
    reasons = _changes(result_config(manifest.get("config")), result_config(stage.config))
    if set(old_inputs) != set(stage.inputs):
        reasons.append(f"inputs now {', '.join(sorted(stage.inputs))} (were {', '.join(sorted(old_inputs))})")
    else:
        reasons += [f"input {name} rewritten" for name, digest in signature["inputs"].items()
                    if old_inputs[name] != digest]
    return "; ".join(reasons)


def run_stage(stage: Stage, stage_dir: Path, force: bool = False, known: tuple[str, dict] | None = None) -> str:
    """Run `stage` in `stage_dir` unless it is up to date (or resume it), and write its manifest.
    `known` is `stage_state`'s answer when the caller has it (the inputs are fingerprinted once).
    Returns what happened: `skipped`, `resumed` or `ran`."""
    state, signature = known or stage_state(stage, stage_dir)
    if force:
        state = "run"
    if state == "done":
        log.info(f"{stage.name}: up to date in {stage_dir}, skipped")
        return "skipped"
    if state == "resume" and not stage.resumable:
        state = "run"
    if state == "run":
        if why := (not force and why_rerun(stage, stage_dir, signature)):
            log.info(f"{stage.name}: re-running: {why}")
        shutil.rmtree(stage_dir, ignore_errors=True)
    stage_dir.mkdir(parents=True, exist_ok=True)
    (stage_dir / STARTED).write_text(json.dumps(signature))
    t0 = time.perf_counter()
    counts = stage.run(str(stage_dir), signature["config_hash"][:8] + fingerprint(signature["inputs"])[:8])
    counts = counts | {"wall_s": round(time.perf_counter() - t0, 1)}
    write_manifest(str(stage_dir), stage.name, stage.config, stage.inputs, signature["inputs"], counts)
    log.info(f"{stage.name}: {_brief(counts)} -> {stage_dir}")
    return "resumed" if state == "resume" else "ran"


def _brief(counts: dict) -> str:
    """The headline counts of a stage (its manifest has them all)."""
    return ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in counts.items()
                     if v is not None and not isinstance(v, (dict, list)) and "_at_" not in k)


PRIOR_RATES: dict[str | None, tuple[float, float]] = {
    "train_examples": (28.0, 0.009),
    "sampled_solutions": (15.0, 0.015),
    "label_questions": (30.0, 0.13),
    "eval_questions": (20.0, 0.12),
    "reranker_rows": (5.0, 0.001),
    None: (5.0, 0.0),
}
"""(start-up seconds, seconds per unit) of each kind of work, the tiny model's on a 2-core laptop
(the demo's validation run, runs/demo-validation):
the estimate's prior until this run has finished a stage of the kind, whose rate then replaces it."""


def _clock(seconds: float) -> str:
    return f"{int(seconds) // 60}:{int(seconds) % 60:02d}"


class PipelineProgress:
    """One view across stages: a line per stage event with the time spent and an estimate of the time
    left (the stages' work from the config, at the rates this run has measured so far), and
    `<out>/pipeline.json`, the table of every stage's state and wall time."""

    def __init__(self, out: Path, stages: list[Stage]):
        self.path, self.t0 = out / "pipeline.json", time.perf_counter()
        self.stages = {s.name: s for s in stages}
        self.rows = {s.name: {"state": "pending", "wall_s": None} for s in stages}
        self.rates = dict(PRIOR_RATES)

    def _estimate(self, stage: Stage) -> float:
        unit, amount = stage.work or (None, 0.0)
        startup, per_unit = self.rates[unit]
        return startup + per_unit * amount

    def seconds_left(self) -> float:
        """The estimate of the stages not finished yet (the running one as a whole)."""
        return sum(self._estimate(self.stages[n]) for n, r in self.rows.items()
                   if r["state"] in ("pending", "running", "resuming"))

    def update(self, name: str, state: str, wall_s: float | None = None) -> None:
        self.rows[name] = {"state": state, "wall_s": None if wall_s is None else round(wall_s, 1)}
        stage = self.stages[name]
        if state == "done" and stage.work and stage.work[1] > 0:
            startup = self.rates[stage.work[0]][0]
            self.rates[stage.work[0]] = (startup, max(wall_s - startup, 0.0) / stage.work[1])
        index = list(self.rows).index(name) + 1
        elapsed = time.perf_counter() - self.t0
        done = f" in {wall_s:.0f} s" if state == "done" else ""
        log.info(f"== [{index}/{len(self.rows)}] {name}: {state}{done}  "
                 f"(pipeline {_clock(elapsed)}, about {_clock(self.seconds_left())} left)")
        self.path.write_text(json.dumps({"stages": self.rows, "elapsed_s": round(elapsed, 1)}, indent=2) + "\n")

    def table(self) -> str:
        lines = ["| stage | state | wall s |", "|---|---|---|"]
        lines += [f"| {n} | {r['state']} | {'' if r['wall_s'] is None else r['wall_s']} |"
                  for n, r in self.rows.items()]
        return "\n".join(lines)


def select_stages(names: list[str], only: list[str]) -> list[str]:
    """The stages `--only` names: a stage's name, or `expert_iteration` for every round's stages."""
    selected = []
    for wanted in only:
        matches = [n for n in names if n == wanted or (wanted == "expert_iteration" and n.startswith(wanted))]
        if not matches:
            raise ValueError(f"--only {wanted!r}: not a stage of this config; stages: {', '.join(names)}")
        selected += matches
    return [n for n in names if n in selected]


def run_pipeline(cfg: GloreConfig, out_dir: str, from_stage: str | None = None,
                 only: list[str] | None = None) -> dict:
    """Run (or finish) the pipeline under `out_dir`; returns the report. With `only`, run just those
    stages (a job per stage): every earlier stage must be done, later ones are left alone."""
    from glore_ray.pipeline.registry import build_stages

    out = Path(out_dir).absolute()
    all_stages = build_stages(cfg, str(out))
    names = [s.name for s in all_stages]
    if from_stage is not None and from_stage not in names:
        raise ValueError(f"--from {from_stage!r}: not a stage of this config; stages: {', '.join(names)}")
    selected = select_stages(names, only) if only else names
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2) + "\n")
    forced = names[names.index(from_stage):] if from_stage else []
    progress = PipelineProgress(out, all_stages)
    for stage in all_stages[:names.index(selected[-1]) + 1]:
        stage_dir = out / stage.name
        state, signature = stage_state(stage, stage_dir)
        if stage.name in forced:
            state = "run"
        if state == "done":
            progress.update(stage.name, "up to date, skipped")
            continue
        if stage.name not in selected:
            raise ValueError(f"{stage.name} is not done in {out} (or its config or inputs changed): "
                             f"run it before {', '.join(selected)}")
        progress.update(stage.name, "resuming" if state == "resume" and stage.resumable else "running")
        t0 = time.perf_counter()
        run_stage(stage, stage_dir, force=stage.name in forced, known=(state, signature))
        progress.update(stage.name, "done", time.perf_counter() - t0)
    log.info(progress.table())
    if selected[-1] != names[-1]:
        return {}
    return _finish_report(out, names)


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
    with (out / "data" / f"{cfg.eval.split}.jsonl").open() as f:
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
    quality = {}
    for kind in ("orm", "sorm"):
        counts = (_read_json(out / f"{kind}_labels" / MANIFEST) or {}).get("counts", {})
        if counts.get("step_accuracy") is not None:
            quality[kind] = {k: counts.get(k) for k in ("step_accuracy", "bad_labelled_good", "checked")}
    if len(quality) == 2:
        margin = quality["sorm"]["step_accuracy"] - quality["orm"]["step_accuracy"]
        quality["sorm_minus_orm"] = round(margin, 4)
        quality["gate_passed"] = margin >= LABEL_GATE
    return quality


def _finish_report(out: Path, names: list[str]) -> dict:
    """Add to the report what the evaluation does not see: the training labels' quality against exact
    truth, and the models that had no training rows (kept untrained), where a reader of the numbers
    sees them."""
    report = json.loads((out / "report.json").read_text())
    labels = training_label_quality(out)
    warnings = [f"{name}: no training rows; the evaluation used the untrained initial model"
                for name in names if (_read_json(out / name / MANIFEST) or {}).get("counts", {}).get("untrained")]
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
