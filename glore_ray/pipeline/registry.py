"""Every GLoRe stage, defined once: its inputs, the config it computes with and its function, which
receives that config and nothing more (the runner hashes its result fields). `glore pipeline`
chains them over one run directory; `glore rollouts|label|pairs|train` run one over the paths a
user gives; `jobs/<stage>.py` is `glore pipeline --only <stage>`. The runner runs them all the same
way and alone writes manifests.

data -> init model -> policy SFT -> expert iteration rounds -> rollouts -> ORM / SORM labels ->
train ORM / SORM -> refinement pairs -> train global / local refiners -> evaluate (report).
"""

from __future__ import annotations

import dataclasses
import logging

from glore_ray.config import GloreConfig, RewardModelConfig, RolloutConfig, TrainConfig
from glore_ray.io import count_rows
from glore_ray.layout import DATA, GLOBAL, HELDOUT, LOCAL, MODEL, ROWS, RunLayout, output
from glore_ray.pipeline.runner import Stage, StageContext

log = logging.getLogger(__name__)


def run_training(ctx: StageContext, objective: str, training: TrainConfig,
                 reward_model: RewardModelConfig | None) -> dict:
    """Fine-tune `objective` from `init` on `rows` into `model/` (Ray Train); a step reward with the
    head `reward_model` says (an implicit PRM's folder names `init` as its reference)."""
    from glore_ray.metrics import StageMetrics
    from glore_ray.models.scorers import write_implicit_spec
    from glore_ray.pipeline.progress import stage_progress, training_line
    from glore_ray.training.objectives import objective as objective_spec
    from glore_ray.training.ray_train import export_untrained, fit

    spec = objective_spec(objective)
    if reward_model is not None:
        spec = spec.with_head(reward_model.head, reward_model.beta)
    rows, init, model = ctx.inputs["rows"], ctx.inputs["init"], output(ctx.dir, MODEL)
    n_rows = count_rows(rows)
    if n_rows == 0:
        # A weak policy can leave a stage without rows (no correct rollout on GSM8K with a tiny
        # model): the model is the initial one, and the manifest and the report say so.
        log.info(f"{ctx.name}: no training rows in {rows}; exporting the untrained initial model")
        export_untrained(spec, init, model)
        counts = {"rows": 0, "untrained": True}
    else:
        with stage_progress(ctx.dir, ctx.name, ctx.run_name, training_line(ctx.name, training.steps)) as progress:
            meta = fit(spec, training, rows, init, model, f"{ctx.run_name}-{ctx.name}-{ctx.key}",
                       StageMetrics(ctx.name, ctx.run_name), progress)
        counts = {"rows": n_rows, "steps": meta["step"], "first_loss": meta.get("first_loss"),
                  "final_loss": meta["loss"], "skipped_long": meta.get("skipped_long", 0),
                  "resumed_from": meta.get("resumed_from")}
    if spec.implicit:
        write_implicit_spec(model, init, spec.implicit_beta)
    return counts


def train_stage(name: str, objective: str, training: TrainConfig, rows: str, init: str, run_name: str,
                reward_model: RewardModelConfig | None = None) -> Stage:
    return Stage(name, {"rows": rows, "init": init},
                 {"objective": objective, "training": training, "reward_model": reward_model}, run_training,
                 run_name, resumable=True, work=("train_examples", training.steps * training.batch_size))


def rollouts_stage(name: str, cfg: GloreConfig, questions: str, policy: str, first: int = 0) -> Stage:
    """`cfg.rollouts.k` graded, de-duplicated policy samples per question from question `first` on
    (Ray Data + engine pool)."""
    from glore_ray.pipeline.rollouts import run_rollouts

    solutions = _questions(cfg) * (cfg.rollouts.k + cfg.rollouts.greedy)
    sections = {"rollouts": cfg.rollouts, "engine": cfg.engine, "sampling": cfg.sampling,
                "keep_calculator": cfg.data.keep_calculator, "first_question": first}
    return Stage(name, {"questions": questions, "policy": policy}, sections, run_rollouts, cfg.run_name,
                 work=("sampled_solutions", solutions))


def reward_model_first_question(cfg: GloreConfig) -> int:
    """Where the reward models' questions start in the training split: after the ones expert
    iteration trained the policy on (`rollouts.disjoint_from_expert_iteration`), so that the reward
    models do not judge solutions to questions the policy has just fitted."""
    ei = cfg.expert_iteration
    return ei.max_questions if ei.rounds and cfg.rollouts.disjoint_from_expert_iteration else 0


def heldout_share(cfg: GloreConfig) -> float:
    """The share of the rollouts' questions no reward model trains on: the reranker's fitting set
    (none without the likelihood reranker)."""
    return cfg.reranker.heldout_share if cfg.reranker.likelihood else 0.0


def labels_stage(cfg: GloreConfig, kind: str, rollouts: str, policy: str | None = None) -> Stage:
    """ORM, SORM (sampled continuations from `policy`) or PRM (exact) step labels of the rollouts."""
    from glore_ray.pipeline.labels import LABELLERS

    if kind not in LABELLERS:
        raise ValueError(f"unknown label kind {kind!r} ({', '.join(LABELLERS)})")
    sections = {"orm": {}, "prm": {"balance": cfg.labels.balance},
                "sorm": {"labels": cfg.labels, "engine": cfg.engine, "max_tokens": cfg.sampling.max_tokens}}[kind]
    inputs = {"rollouts": output(rollouts, DATA)}
    if kind == "sorm":
        if policy is None:
            raise ValueError("SORM labels need the policy (--model) to sample continuations")
        inputs["policy"] = policy
    return Stage(f"{kind}_labels", inputs, {"heldout_share": heldout_share(cfg)} | sections, LABELLERS[kind],
                 cfg.run_name, work=("label_questions", _questions(cfg)) if kind == "sorm" else None)


def _questions(cfg: GloreConfig) -> int:
    """The training questions the rollouts sample (for the time estimate; 0 when a file's size is unknown)."""
    if cfg.rollouts.max_questions:
        return cfg.rollouts.max_questions
    return cfg.data.organism.n_train if cfg.data.source == "organism" else 0


def pairs_stage(cfg: GloreConfig, rollouts: str, sorm_rows: str) -> Stage:
    """Global pairs from the rollouts, local pairs from labelled SORM rows and their continuations."""
    from glore_ray.pipeline.pairs import run_pairs

    return Stage("pairs", {"rollouts": output(rollouts, DATA), "sorm": sorm_rows}, {"pairs": cfg.pairs}, run_pairs,
                 cfg.run_name)


def expert_iteration_stages(cfg: GloreConfig, run: RunLayout, policy: str, r: int) -> list[Stage]:
    """Round `r`: samples of `policy` on the training questions, their SFT rows, the policy fine-tuned."""
    from glore_ray.pipeline.rollouts import write_expert_iteration_rows

    ei = cfg.expert_iteration
    samples, rows = RunLayout.expert_iteration(r, "samples"), RunLayout.expert_iteration(r, "rows")
    sampling = dataclasses.replace(cfg, rollouts=RolloutConfig(k=ei.k, temperature=ei.temperature,
                                                               max_questions=ei.max_questions, greedy=False,
                                                               pool=cfg.rollouts.pool))
    return [rollouts_stage(samples, sampling, run.split("train"), policy),
            Stage(rows, {"samples": run.output(samples)}, {"seed": cfg.policy.seed + r},
                  write_expert_iteration_rows, cfg.run_name),
            train_stage(RunLayout.expert_iteration(r), "policy", ei.training(cfg.policy), run.output(rows, ROWS),
                        policy, cfg.run_name)]


def build_stages(cfg: GloreConfig, out: str) -> list[Stage]:
    from glore_ray.pipeline.data_stage import data_sources, run_data, run_init_model
    from glore_ray.pipeline.evaluation import run_evaluation
    from glore_ray.pipeline.reranker import fit_reranker

    run, run_name = RunLayout(out), cfg.run_name
    pipeline = [Stage("data", data_sources(cfg.data), {"data": cfg.data}, run_data, run_name)]
    if cfg.model.pretrained:
        init = cfg.model.pretrained
    else:
        init = run.model("init_model")
        pipeline.append(Stage("init_model", {"train": run.split("train")}, {"model": cfg.model, "seed": cfg.policy.seed},
                              run_init_model, run_name))
    pipeline.append(train_stage("policy", "policy", cfg.policy, run.sft_rows, init, run_name))
    policy = run.model("policy")
    for r in range(1, cfg.expert_iteration.rounds + 1):
        pipeline += expert_iteration_stages(cfg, run, policy, r)
        policy = run.model(RunLayout.expert_iteration(r))

    rollouts = run.stage("rollouts")
    pipeline += [
        rollouts_stage("rollouts", cfg, run.split("train"), policy, reward_model_first_question(cfg)),
        labels_stage(cfg, "orm", rollouts),
        labels_stage(cfg, "sorm", rollouts, policy),
        train_stage("orm", "orm", cfg.orm, run.output("orm_labels"), policy, run_name, cfg.reward_model),
        train_stage("sorm", "sorm", cfg.sorm, run.output("sorm_labels"), policy, run_name, cfg.reward_model),
    ]
    if has_prm(cfg):  # the SORM's model and training on exact step labels (the model organism only)
        pipeline += [labels_stage(cfg, "prm", rollouts),
                     train_stage("prm", "sorm", cfg.sorm, run.output("prm_labels"), policy, run_name, cfg.reward_model)]
    if cfg.reranker.likelihood:
        pipeline.append(Stage("reranker", {"rows": run.output("orm_labels", HELDOUT), "orm": run.model("orm"),
                                           "policy": policy},
                              {"reranker": cfg.reranker}, fit_reranker, run_name,
                              work=("reranker_rows", cfg.reranker.fit_rows)))
    pipeline += [
        pairs_stage(cfg, rollouts, run.output("sorm_labels")),
        train_stage("global_refiner", "global_refiner", cfg.global_refiner, run.output("pairs", GLOBAL), policy,
                    run_name),
        train_stage("local_refiner", "local_refiner", cfg.local_refiner, run.output("pairs", LOCAL), policy, run_name),
    ]
    # The evaluation reads the validation split while settings are chosen, the test split once.
    models = run.model_dirs(cfg) | ({"prm": run.model("prm")} if has_prm(cfg) else {})
    pipeline.append(Stage("evaluate", {"test": run.split(cfg.eval.split)} | models,
                          {"eval": cfg.eval, "ensemble": cfg.ensemble, "engine": cfg.engine, "sampling": cfg.sampling},
                          run_evaluation,
                          run_name, work=("eval_questions", cfg.eval.n_problems)))
    return pipeline


def has_prm(cfg: GloreConfig) -> bool:
    """Whether the run trains and reports the exact-label PRM: only the model organism has exact labels."""
    return cfg.labels.prm and cfg.data.source == "organism"
