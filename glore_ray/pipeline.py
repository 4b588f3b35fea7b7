"""`glore pipeline`: every GLoRe stage in order on one Ray cluster, skipping what is up to date.

data -> init model -> policy SFT -> expert iteration rounds -> rollouts -> ORM / SORM labels ->
train ORM / SORM -> refinement pairs -> train global / local refiners -> evaluate (report).

Each stage owns `<out>/<stage>/` and ends by writing its `manifest.json` (the config slice and
input fingerprints it ran with, its counts, its wall time). A re-run skips a stage whose manifest
matches; a stage that started with the same config and inputs but has no manifest was interrupted
and resumes (training from its last Ray Train checkpoint); any other stage starts from a clean
directory. `--from <stage>` re-runs that stage and everything after it. Downstream stages see an
upstream re-run through their input fingerprints.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from glore_ray.config import SERVED_MODELS, GloreConfig, RolloutConfig, result_config
from glore_ray.manifest import MANIFEST, fingerprint, input_fingerprint, write_manifest

Log = Callable[[str], None]
STARTED = "started.json"


@dataclass
class Stage:
    name: str
    inputs: dict[str, str]
    """Paths the stage reads; their fingerprints are part of the manifest."""
    config: dict[str, Any]
    """The config slice the stage depends on (a change re-runs it)."""
    run: Callable[[str, str], dict]
    """(stage directory, run key) -> counts. The run key is stable across an interrupted stage's
    restarts, so Ray Train finds its checkpoints, and changes with the config or the inputs."""
    resumable: bool = False
    """Keeps an interrupted run's directory (Ray Train checkpoints); other stages restart clean."""


def _asdict(cfg: GloreConfig, *sections: str) -> dict:
    return {name: dataclasses.asdict(getattr(cfg, name)) for name in sections}


def _train_stage(name: str, objective: str, cfg: GloreConfig, rows: str, init: str, log: Log,
                 train_cfg=None) -> Stage:
    from glore_ray.metrics import StageMetrics
    from glore_ray.trainer import count_rows, export_untrained, fit

    train_cfg = train_cfg or cfg.training(objective)

    def run(stage_dir: str, key: str) -> dict:
        model = f"{stage_dir}/model"
        n_rows = count_rows(rows)
        if n_rows == 0:
            # A weak policy can leave a stage without rows (no correct rollout on GSM8K with a tiny
            # model): the model is the initial one, and the manifest and the report say so.
            log(f"{name}: no training rows in {rows}; exporting the untrained initial model")
            export_untrained(objective, init, model)
            return {"rows": 0, "untrained": True}
        meta = fit(objective, train_cfg, rows, init, model, f"{cfg.run_name}-{name}-{key}", log,
                   StageMetrics(name, cfg.run_name))
        return {"rows": n_rows, "steps": meta["step"], "first_loss": meta.get("first_loss"),
                "final_loss": meta["loss"], "resumed_from": meta.get("resumed_from")}

    return Stage(name, {"rows": rows, "init": init}, {objective: dataclasses.asdict(train_cfg)}, run, resumable=True)


def model_dir(out: str, stage: str) -> str:
    return f"{out}/{stage}/model"


def ensemble_models(cfg: GloreConfig, out: str) -> dict[str, str]:
    """The five models the evaluation and the Serve app load, by name (the policy is the last
    expert-iteration round's), and the likelihood reranker's folder when `reranker.likelihood`:
    it then ranks in the ORM's place."""
    rounds = cfg.expert_iteration.rounds
    policy = model_dir(out, f"expert_iteration_{rounds}" if rounds else "policy")
    models = {m: policy if m == "policy" else model_dir(out, m) for m in SERVED_MODELS}
    return models | ({"reranker": model_dir(out, "reranker")} if cfg.reranker.likelihood else {})


def has_prm(cfg: GloreConfig) -> bool:
    """Whether the run trains and reports the exact-label PRM: only the model organism has exact labels."""
    return cfg.labels.prm and cfg.data.source == "organism"


def data_splits(cfg: GloreConfig) -> tuple[str, ...]:
    """The splits the data stage writes: the validation split when the source has one."""
    has_validation = cfg.data.source == "organism" or bool(cfg.data.validation_path)
    return ("train", "validation", "test") if has_validation else ("train", "test")


def build_stages(cfg: GloreConfig, out: str, log: Log) -> list[Stage]:
    from glore_ray import single_process, stages
    from glore_ray.evaluation import run_evaluation

    # The evaluation reads the validation split while settings are chosen, the test split once.
    train, test = f"{out}/data/train.jsonl", f"{out}/data/{cfg.eval.split}.jsonl"
    sft_rows = f"{out}/data/sft.jsonl"

    def run_data(stage_dir: str, key: str) -> dict:
        counts = {split: single_process.write_split(cfg, split, f"{stage_dir}/{split}.jsonl", log)
                  for split in data_splits(cfg)}
        counts["sft_rows"] = single_process.write_sft_rows(f"{stage_dir}/train.jsonl", f"{stage_dir}/sft.jsonl")
        return counts

    def run_init(stage_dir: str, key: str) -> dict:
        single_process.build_tiny_policy(cfg, train, f"{stage_dir}/model", log)
        return {"built": "tiny"}

    sources = {f"{split}_source": getattr(cfg.data, f"{split}_path") for split in data_splits(cfg)} \
        if cfg.data.source == "files" else {}
    out_stages = [Stage("data", sources, {"data": dataclasses.asdict(cfg.data)}, run_data)]
    if cfg.model.pretrained:
        init = cfg.model.pretrained
    else:
        init = model_dir(out, "init_model")
        out_stages.append(Stage("init_model", {"train": train}, {"model": dataclasses.asdict(cfg.model),
                                                                 "seed": cfg.policy.seed}, run_init))
    out_stages.append(_train_stage("policy", "policy", cfg, sft_rows, init, log))
    policy = model_dir(out, "policy")
    ei = cfg.expert_iteration
    for r in range(1, ei.rounds + 1):
        samples = f"{out}/expert_iteration_{r}_samples"
        ei_cfg = dataclasses.replace(cfg, rollouts=RolloutConfig(k=ei.k, temperature=ei.temperature,
                                                                 max_questions=ei.max_questions, greedy=False,
                                                                 pool=cfg.rollouts.pool))

        def run_samples(stage_dir: str, key: str, ei_cfg=ei_cfg, policy=policy) -> dict:
            return stages.run_rollouts(ei_cfg, train, policy, stage_dir, log)

        def run_ei_rows(stage_dir: str, key: str, samples=samples, seed=cfg.policy.seed + r) -> dict:
            return stages.write_expert_iteration_rows(samples, f"{stage_dir}/rows", seed)

        out_stages += [
            Stage(f"expert_iteration_{r}_samples", {"train": train, "policy": policy},
                  _asdict(ei_cfg, "rollouts", "engine", "sampling"), run_samples),
            Stage(f"expert_iteration_{r}_rows", {"samples": f"{samples}/data"}, {"seed": cfg.policy.seed + r},
                  run_ei_rows),
            _train_stage(f"expert_iteration_{r}", "policy", cfg, f"{out}/expert_iteration_{r}_rows/rows", policy, log,
                         ei.training(cfg.policy)),
        ]
        policy = model_dir(out, f"expert_iteration_{r}")

    rollouts, orm_labels, sorm_labels, pairs = (f"{out}/{s}" for s in ("rollouts", "orm_labels", "sorm_labels",
                                                                        "pairs"))
    # The PRM: the SORM's model and training on exact step labels (the model organism only).
    prm_stages = [
        Stage("prm_labels", {"rollouts": f"{rollouts}/data"},
              {"balance": cfg.labels.balance, "seed": cfg.labels.seed},
              lambda d, k: stages.run_labels(cfg, "prm", rollouts, None, d, log)),
        _train_stage("prm", "sorm", cfg, f"{out}/prm_labels/data", policy, log, cfg.sorm),
    ] if has_prm(cfg) else []
    reranker_stages = [
        Stage("reranker", {"rows": f"{orm_labels}/data", "orm": model_dir(out, "orm"), "policy": policy},
              _asdict(cfg, "reranker"),
              lambda d, k: stages.fit_reranker_stage(cfg, f"{orm_labels}/data", model_dir(out, "orm"), policy, d, log)),
    ] if cfg.reranker.likelihood else []
    out_stages += [
        Stage("rollouts", {"train": train, "policy": policy}, _asdict(cfg, "rollouts", "engine", "sampling"),
              lambda d, k: stages.run_rollouts(cfg, train, policy, d, log)),
        Stage("orm_labels", {"rollouts": f"{rollouts}/data"}, {},
              lambda d, k: stages.run_labels(cfg, "orm", rollouts, None, d, log)),
        Stage("sorm_labels", {"rollouts": f"{rollouts}/data", "policy": policy},
              _asdict(cfg, "labels", "engine", "sampling"),
              lambda d, k: stages.run_labels(cfg, "sorm", rollouts, policy, d, log)),
        _train_stage("orm", "orm", cfg, f"{orm_labels}/data", policy, log),
        _train_stage("sorm", "sorm", cfg, f"{sorm_labels}/data", policy, log),
        *prm_stages,
        *reranker_stages,
        # Local pairs come from the labelled rows before balancing, with their continuations.
        Stage("pairs", {"rollouts": f"{rollouts}/data",
                        "sorm": f"{sorm_labels}/{'unbalanced' if cfg.labels.balance else 'data'}"}, {},
              lambda d, k: stages.run_pairs(rollouts, sorm_labels, d, log)),
        _train_stage("global_refiner", "global-refiner", cfg, f"{pairs}/global", policy, log),
        _train_stage("local_refiner", "local-refiner", cfg, f"{pairs}/local", policy, log),
    ]
    models = ensemble_models(cfg, out) | ({"prm": model_dir(out, "prm")} if has_prm(cfg) else {})
    out_stages.append(Stage("evaluate", {"test": test} | models, _asdict(cfg, "eval", "engine", "sampling"),
                            lambda d, k: run_evaluation(cfg, test, models, d, out, log)))
    return out_stages


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
    if manifest is not None and {"config_hash": fingerprint(result_config(manifest.get("config"))), "inputs": {
            name: entry.get("hash") for name, entry in manifest.get("inputs", {}).items()}} == signature:
        return "done", signature
    started = _read_json(stage_dir / STARTED)
    return ("resume" if manifest is None and started == signature else "run"), signature


class PipelineProgress:
    """One view across stages: a line per stage event and `<out>/pipeline.json`, the table of every
    stage's state and wall time, rewritten as the run moves on."""

    def __init__(self, out: Path, names: list[str], log: Log):
        self.path, self.log, self.t0 = out / "pipeline.json", log, time.perf_counter()
        self.rows = {name: {"state": "pending", "wall_s": None} for name in names}

    def update(self, name: str, state: str, wall_s: float | None = None) -> None:
        self.rows[name] = {"state": state, "wall_s": None if wall_s is None else round(wall_s, 1)}
        index = list(self.rows).index(name) + 1
        elapsed = time.perf_counter() - self.t0
        self.log(f"== [{index}/{len(self.rows)}] {name}: {state}  (pipeline {elapsed:.0f} s)")
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


def run_pipeline(cfg: GloreConfig, out_dir: str, from_stage: str | None = None, log: Log = print,
                 only: list[str] | None = None) -> dict:
    """Run (or finish) the pipeline under `out_dir`; returns the report. With `only`, run just those
    stages (a job per stage): every earlier stage must be done, later ones are left alone."""
    from glore_ray.config import config_to_dict

    out = Path(out_dir).absolute()
    all_stages = build_stages(cfg, str(out), log)
    names = [s.name for s in all_stages]
    if from_stage is not None and from_stage not in names:
        raise ValueError(f"--from {from_stage!r}: not a stage of this config; stages: {', '.join(names)}")
    selected = select_stages(names, only) if only else names
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config_to_dict(cfg), indent=2) + "\n")
    forced = names[names.index(from_stage):] if from_stage else []
    progress = PipelineProgress(out, names, log)
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
        if state == "resume" and not stage.resumable:
            state = "run"
        if state == "run":
            shutil.rmtree(stage_dir, ignore_errors=True)
        stage_dir.mkdir(parents=True, exist_ok=True)
        (stage_dir / STARTED).write_text(json.dumps(signature))
        progress.update(stage.name, "resuming" if state == "resume" else "running")
        t0 = time.perf_counter()
        counts = stage.run(str(stage_dir), signature["config_hash"][:8] + fingerprint(signature["inputs"])[:8])
        wall = time.perf_counter() - t0
        write_manifest(str(stage_dir), stage.name, stage.config, stage.inputs, counts | {"wall_s": round(wall, 1)})
        progress.update(stage.name, "done", wall)
    log(progress.table())
    if selected[-1] != names[-1]:
        return {}
    report = _finish_report(out, names)
    log((out / "report.md").read_text())
    return report


LABEL_GATE = 0.10
"""SORM training labels should beat ORM labels against exact truth by this much on the same rows
before the reward models' results mean much (the organism benchmark's protocol)."""


def training_label_quality(out: Path) -> dict:
    """The ORM's and SORM's training labels against exact truth on the same, unbalanced rows (from
    the label stages' manifests), and whether the SORM's beat the ORM's by LABEL_GATE."""
    quality = {}
    for kind in ("orm", "sorm"):
        counts = (_read_json(out / f"{kind}_labels" / MANIFEST) or {}).get("counts", {})
        prefix = "unbalanced_" if "unbalanced_step_accuracy" in counts else ""
        if counts.get(f"{prefix}step_accuracy") is not None:
            quality[kind] = {k: counts.get(f"{prefix}{k}") for k in ("step_accuracy", "bad_labelled_good", "checked")}
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
                        f"against exact truth, under the {100 * LABEL_GATE:.0f}-point gate: fix the labels first")
    added = {"training_labels": labels} if labels else {}
    added |= {"warnings": warnings} if warnings else {}
    if any(report.get(k) != v for k, v in added.items()):
        report |= added
        (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
        md = (out / "report.md").read_text().split("\n## Training labels", 1)[0].split("\n## Warnings", 1)[0]
        if labels:
            md += ("\n## Training labels against exact truth (same unbalanced rows)\n\n"
                   + "".join(f"- {k.upper()}: {100 * labels[k]['step_accuracy']:.1f}% of {labels[k]['checked']} steps "
                             f"right, {100 * (labels[k]['bad_labelled_good'] or 0):.1f}% of bad steps labelled good\n"
                             for k in ("orm", "sorm") if k in labels))
        if warnings:
            md += "\n## Warnings\n\n" + "".join(f"- {w}\n" for w in warnings)
        (out / "report.md").write_text(md)
    return report
