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
from glore_ray.pipeline.manifest import MANIFEST, fingerprint, input_fingerprint, read_json, write_manifest

log = logging.getLogger(__name__)
STARTED = "started.json"


@dataclass(frozen=True)
class StageContext:
    """What a stage's function gets besides its config: its name, where it writes, its inputs, its run key."""
    name: str
    dir: str
    inputs: dict[str, str]
    key: str = ""
    """Stable across an interrupted stage's restarts, so Ray Train finds its checkpoints; changes
    with the config or the inputs."""
    run_name: str = ""
    """The run's name, for metrics and Ray Train run names (a label: not hashed)."""


@dataclass
class Stage:
    name: str
    inputs: dict[str, str]
    """Paths the stage reads; their fingerprints are part of the manifest."""
    sections: dict[str, Any]
    """The config the stage computes with, by the parameter names of `run`: config sections
    (dataclasses) or plain values. `run` receives these and nothing else of the config, and the
    hash covers their result fields, so what a stage can read is what re-runs it."""
    run: Callable[..., dict]
    """run(ctx: StageContext, **sections) -> counts"""
    run_name: str = ""
    resumable: bool = False
    """Keeps an interrupted run's directory (Ray Train checkpoints); other stages restart clean."""
    work: tuple[str, float] | None = None
    """(unit, amount) the time estimate counts in, from the config: training examples, sampled
    solutions, labelled or evaluated questions; None for a short stage."""

    @property
    def config(self) -> dict[str, Any]:
        """The sections as the manifest stores them (nested dicts)."""
        return {name: dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v for name, v in self.sections.items()}

    def call(self, stage_dir: str, key: str = "") -> dict:
        """Run the stage's function in `stage_dir` (no manifest, no skipping: `run_stage` does those)."""
        return self.run(StageContext(self.name, stage_dir, dict(self.inputs), key, self.run_name), **self.sections)


def _signature(stage: Stage) -> dict:
    """What a stage's result depends on: its config slice without the EXECUTION fields (resources,
    replicas, logging, checkpoints, storage) and its inputs' fingerprints."""
    return {"config_hash": fingerprint(result_config(stage.config)),
            "inputs": {name: input_fingerprint(path) for name, path in stage.inputs.items()}}


def stage_state(stage: Stage, stage_dir: Path) -> tuple[str, dict]:
    """`done` (manifest matches), `resume` (started with this signature, no manifest) or `run`."""
    signature = _signature(stage)
    manifest = read_json(stage_dir / MANIFEST)
    # Hashed from the manifest's own config slice, so a manifest written when every field was hashed
    # still matches.
    if manifest is not None and _manifest_signature(manifest) == signature:
        return "done", signature
    started = read_json(stage_dir / STARTED)
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
    manifest = read_json(stage_dir / MANIFEST)
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
    counts = stage.call(str(stage_dir), signature["config_hash"][:8] + fingerprint(signature["inputs"])[:8])
    counts = counts | {"wall_s": round(time.perf_counter() - t0, 1)}
    write_manifest(str(stage_dir), stage.name, stage.config, stage.inputs, signature["inputs"], counts)
    log.info(f"{stage.name}: {_brief(counts)} -> {stage_dir}")
    return "resumed" if state == "resume" else "ran"


def _brief(counts: dict) -> str:
    """The headline counts of a stage (its manifest has them all)."""
    return ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in counts.items()
                     if v is not None and not isinstance(v, (dict, list)) and "_at_" not in k)


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
    from glore_ray.pipeline.estimate import PipelineProgress

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
    from glore_ray.pipeline.closing import finish_report

    return finish_report(out, names)


