"""The whole job's configuration, and what of it a stage's hash covers."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from glore_ray.config.data import DataConfig, ModelConfig
from glore_ray.config.engines import EngineConfig, LabelConfig, RolloutConfig, SamplingConfig
from glore_ray.config.ensemble import GENERATORS, EnsembleSettings
from glore_ray.config.fields import check
from glore_ray.config.serving import EvalConfig, ServeConfig
from glore_ray.config.training import (
    _FINE_TUNE,
    _REWARD_MODEL,
    ExpertIterationConfig,
    PairsConfig,
    RerankerConfig,
    RewardModelConfig,
    TrainConfig,
)


@dataclass
class GloreConfig:
    """The whole job."""

    run_name: str = "tiny-cpu"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    policy: TrainConfig = field(default_factory=lambda: TrainConfig(steps=450, batch_size=64))
    orm: TrainConfig = field(default_factory=lambda: dataclasses.replace(_REWARD_MODEL))
    sorm: TrainConfig = field(default_factory=lambda: dataclasses.replace(_REWARD_MODEL))
    global_refiner: TrainConfig = field(default_factory=lambda: dataclasses.replace(_FINE_TUNE))
    local_refiner: TrainConfig = field(default_factory=lambda: dataclasses.replace(_FINE_TUNE))
    engine: EngineConfig = field(default_factory=EngineConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    ensemble: EnsembleSettings = field(default_factory=EnsembleSettings)
    expert_iteration: ExpertIterationConfig = field(default_factory=ExpertIterationConfig)
    rollouts: RolloutConfig = field(default_factory=RolloutConfig)
    labels: LabelConfig = field(default_factory=LabelConfig)
    reward_model: RewardModelConfig = field(default_factory=RewardModelConfig)
    reranker: RerankerConfig = field(default_factory=RerankerConfig)
    pairs: PairsConfig = field(default_factory=PairsConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)

    def training(self, objective: str) -> TrainConfig:
        """The training section of an objective (its name is the section's)."""
        return getattr(self, objective)

    def validate(self, key: str = "") -> None:
        for f in dataclasses.fields(self):
            section = getattr(self, f.name)
            if dataclasses.is_dataclass(section):
                section.validate(f.name)
        check(self.eval.split != "validation" or self.data.source == "organism" or bool(self.data.validation_path),
               "eval.split", "validation needs data.validation_path when data.source is 'files'")
        if self.expert_iteration.rounds:
            self.expert_iteration.training(self.policy).validate("expert_iteration (with policy's settings)")
            check(not self.rollouts.disjoint_from_expert_iteration or self.expert_iteration.max_questions > 0,
                   "rollouts.disjoint_from_expert_iteration",
                   "expert iteration trains on every training question (expert_iteration.max_questions 0), so the "
                   "reward models' questions cannot be disjoint from them: limit expert_iteration.max_questions, "
                   "or set this to false to reuse them")
        check(self.engine.max_model_len <= self.model.max_position_embeddings, "engine.max_model_len",
               f"{self.engine.max_model_len} exceeds model.max_position_embeddings "
               f"{self.model.max_position_embeddings}")
        gpu_replicas = [(f"{key}.gpus_per_replica", pool.gpus_per_replica) for key, pool in (
            ("rollouts.pool", self.rollouts.pool), ("labels.pool", self.labels.pool), ("eval.pool", self.eval.pool))]
        gpu_replicas += [(f"serve.{m}.gpus", getattr(self.serve, m).gpus) for m in GENERATORS]
        for key, gpus in gpu_replicas:
            # A replica holds one engine, sharded over tensor_parallel_size GPUs.
            check(gpus == 0 or gpus >= self.engine.tensor_parallel_size, key,
                   f"{gpus} GPUs cannot hold an engine with engine.tensor_parallel_size "
                   f"{self.engine.tensor_parallel_size}")


def _execution_keys(section: Any) -> set[str]:
    keys = set()
    for f in dataclasses.fields(section):
        if f.metadata.get("execution"):
            keys.add(f.name)
        elif dataclasses.is_dataclass(value := getattr(section, f.name)):
            keys |= _execution_keys(value)
    return keys


EXECUTION_KEYS = frozenset(_execution_keys(GloreConfig()))
"""The names of every EXECUTION field: each names only such fields wherever it appears."""


def result_config(tree: Any) -> Any:
    """A stage's config slice (nested dicts, as manifests store it) without its EXECUTION fields:
    what its hash covers."""
    if isinstance(tree, dict):
        return {k: result_config(v) for k, v in tree.items() if k not in EXECUTION_KEYS}
    return tree
