"""The typed configuration tree: one dataclass section per concern, loaded from YAML and
overridden with dotted keys (`load`), documented by `glore config` (`describe`).

Sections live beside one another by concern (data, training, engines, serving, the ensemble's
settings); this package imports nothing else of glore_ray, so every other package may import it.
"""

from glore_ray.config.data import DataConfig, ModelConfig, OrganismConfig
from glore_ray.config.describe import describe_config, field_docs
from glore_ray.config.engines import EngineConfig, EnginePoolConfig, LabelConfig, RolloutConfig, SamplingConfig
from glore_ray.config.ensemble import STEP_THRESHOLD, EnsembleSettings
from glore_ray.config.fields import EXECUTION, ConfigError
from glore_ray.config.glore import EXECUTION_KEYS, GloreConfig, result_config
from glore_ray.config.load import load_config, parse_override
from glore_ray.config.serving import EvalConfig, ModelDeploymentConfig, ServeConfig
from glore_ray.config.training import (
    ExpertIterationConfig,
    PairsConfig,
    RerankerConfig,
    RewardModelConfig,
    TrainConfig,
)

__all__ = [
    "EXECUTION", "EXECUTION_KEYS", "STEP_THRESHOLD", "ConfigError", "DataConfig", "EngineConfig", "EnginePoolConfig",
    "EnsembleSettings", "EvalConfig", "ExpertIterationConfig", "GloreConfig", "LabelConfig", "ModelConfig",
    "ModelDeploymentConfig", "OrganismConfig", "PairsConfig", "RerankerConfig", "RewardModelConfig", "RolloutConfig",
    "SamplingConfig", "ServeConfig", "TrainConfig", "describe_config", "field_docs", "load_config",
    "parse_override", "result_config",
]
