"""Where the ensemble runs: the evaluation stage and the Serve app (its deployments)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from glore_ray.config.engines import EnginePoolConfig
from glore_ray.config.ensemble import MODELS
from glore_ray.config.fields import EXECUTION, check, check_resources


@dataclass
class EvalConfig:
    """Evaluation on the test split: the policy's samples, the reward models and the refinement
    ensemble (one model server per model, `pool.replicas` of each)."""

    split: Literal["test", "validation"] = "test"
    """The split evaluated: `validation` while settings are chosen, `test` once, for the final run."""
    n_problems: int = 300
    """Problems to evaluate (the first n of the split)."""
    k: int = 3
    """Samples per problem: per-sample accuracy, pass@k and the ORM-reranked best-of-k baseline."""
    temperature: float = 1.0
    always_refine: bool = True
    """Refine every draft, as the paper's main table does; else only drafts the ORM scores below
    `ensemble.orm_threshold`. (The ensemble's other settings are the `ensemble:` section's, as
    served; the evaluation locates the first bad step with the SORM, and reports the ORM's.)"""
    max_rounds: int = 1
    """Iterated refinement (beyond the paper): after the first round, a question whose chosen
    candidate the ORM (or the reranker) scores below `ensemble.orm_threshold` is refined again from that
    candidate, the refiners sampling at `temperature` (greedy refiners would repeat the first
    round's rewrites), up to this many rounds in all; each round is a row of the report."""
    pool: EnginePoolConfig = field(default_factory=lambda: EnginePoolConfig(cpus_per_replica=0.25, batch_size=64), metadata=EXECUTION)
    """Resources per model served (each in its own actor, or all in one when cpus_per_replica is
    a fraction and gpus_per_replica 0); batch_size is questions per ensemble call."""

    def validate(self, key: str) -> None:
        check(self.n_problems > 0, f"{key}.n_problems", "must be > 0")
        check(self.k >= 1, f"{key}.k", "must be >= 1")
        check(self.max_rounds >= 1, f"{key}.max_rounds", "must be >= 1")
        check(self.temperature > 0, f"{key}.temperature", "must be > 0 (greedy is always measured)")
        self.pool.validate(f"{key}.pool")


@dataclass
class ModelDeploymentConfig:
    """One model's Ray Serve deployment: replicas, resources and dynamic batching."""

    min_replicas: int = 1
    max_replicas: int = 1
    """Above min_replicas, Serve's autoscaler adds replicas while the ongoing requests per replica
    exceed target_ongoing_requests."""
    target_ongoing_requests: float = 16
    cpus: float = 0.25
    gpus: float = 0.0
    """GPUs per replica: engine.tensor_parallel_size of them for a generator on a cluster, 0 on CPU."""
    accelerator_type: str = field(default="", metadata=EXECUTION)
    """Ray's accelerator type the GPUs must be (e.g. A100-80G, as nodes advertise it in
    `accelerator_type:<type>`); empty: any."""
    resources: dict[str, float] = field(default_factory=dict, metadata=EXECUTION)
    """Custom Ray resources each replica needs, such as a node type's marker (`{"serve_node": 1}`)."""
    max_batch_size: int = 16
    """Requests merged into one call (`@serve.batch`): of the ensemble at the ingress, of the
    engine or scorer at a model; 1 turns batching off."""
    batch_wait_timeout_s: float = 0.01
    """How long a batch waits to fill once its first request is in."""
    max_ongoing_requests: int = 64
    """Requests a replica accepts at once; keep it >= max_batch_size or batches never fill."""

    def validate(self, key: str) -> None:
        check(1 <= self.min_replicas <= self.max_replicas, f"{key}.min_replicas/max_replicas",
               f"need 1 <= min_replicas <= max_replicas, got {self.min_replicas} and {self.max_replicas}")
        check(self.target_ongoing_requests > 0, f"{key}.target_ongoing_requests", "must be > 0")
        check(self.cpus > 0, f"{key}.cpus", "must be > 0")
        check(self.gpus >= 0, f"{key}.gpus", "must be >= 0")
        check(not self.accelerator_type or self.gpus > 0, f"{key}.accelerator_type",
               "needs gpus > 0")
        check_resources(self.resources, f"{key}.resources")
        check(self.max_batch_size >= 1, f"{key}.max_batch_size", "must be >= 1")
        check(self.batch_wait_timeout_s >= 0, f"{key}.batch_wait_timeout_s", "must be >= 0")
        check(self.max_ongoing_requests >= self.max_batch_size, f"{key}.max_ongoing_requests",
               f"{self.max_ongoing_requests} is below max_batch_size {self.max_batch_size}: batches could never fill")


@dataclass
class ServeConfig:
    """The online refinement ensemble (`glore serve`): an HTTP ingress and one deployment per model."""

    host: str = "127.0.0.1"
    """Where the HTTP proxy listens; 0.0.0.0 exposes it beyond this machine (put a token on it)."""
    port: int = 8000
    token_file: str = ""
    """A file (e.g. a mounted Kubernetes secret) holding the bearer token /v1/solve requires."""
    token_env: str = "GLORE_SERVE_TOKEN"
    """Else the environment variable holding it; neither set: no token is required."""
    model_timeout_s: float = 60.0
    """A model call slower than this (a dead or restarting replica) answers 503."""
    max_question_chars: int = 2000
    max_draft_chars: int = 8000
    max_rounds: int = 3
    """The most refinement rounds a request may ask for (`max_rounds`): each later round is another
    pass of the ensemble over the answers the ORM still scores below `orm_threshold`."""
    ingress: ModelDeploymentConfig = field(default_factory=lambda: ModelDeploymentConfig(batch_wait_timeout_s=0.05))
    """The FastAPI deployment running the ensemble: it batches whole requests (one ensemble call,
    so one call per model and step, for a batch of questions)."""
    policy: ModelDeploymentConfig = field(default_factory=ModelDeploymentConfig)
    global_refiner: ModelDeploymentConfig = field(default_factory=ModelDeploymentConfig)
    local_refiner: ModelDeploymentConfig = field(default_factory=ModelDeploymentConfig)
    orm: ModelDeploymentConfig = field(default_factory=ModelDeploymentConfig)
    sorm: ModelDeploymentConfig = field(default_factory=ModelDeploymentConfig)

    def validate(self, key: str) -> None:
        check(0 < self.port < 65536, f"{key}.port", "must be in [1, 65535]")
        check(self.model_timeout_s > 0, f"{key}.model_timeout_s", "must be > 0")
        check(self.max_question_chars > 0, f"{key}.max_question_chars", "must be > 0")
        check(self.max_draft_chars > 0, f"{key}.max_draft_chars", "must be > 0")
        check(self.max_rounds >= 1, f"{key}.max_rounds", "must be >= 1")
        for name in ("ingress", *MODELS):
            getattr(self, name).validate(f"{key}.{name}")
