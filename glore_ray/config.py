"""The typed configuration tree: one dataclass section per concern, loaded from YAML and
overridden with dotted keys (``--set engine.temperature=0.7``).

Every error names the offending key, so a typo in a 200-line cluster config is a one-line fix.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from glore_ray.core.ensemble import GENERATORS, MODELS


class ConfigError(ValueError):
    """A config value or key is invalid; the message names the dotted key."""


EXECUTION = {"execution": True}
"""Field metadata: where and how fast a stage runs (resources, replicas, logging, checkpoints,
storage), never what it computes. A stage's hash leaves these fields out
(`result_config`), so scaling a run or moving it re-runs nothing."""

@dataclass
class OrganismConfig:
    """The model organism: procedurally generated multi-step arithmetic word problems."""

    seed: int = 0
    """Seed of the generator; the same seed gives the same problems."""
    n_train: int = 20000
    """Problems in the training split."""
    n_test: int = 500
    """Problems in the test split (generated from a disjoint seed stream)."""
    n_validation: int = 500
    """Problems in the validation split (its own seed stream): settings are chosen on it, so that
    the test split is read once, by the final run."""
    min_steps: int = 2
    """Fewest reasoning steps in a problem (2..6)."""
    max_steps: int = 3
    """Most reasoning steps in a problem (2..6)."""
    max_operand: int = 10
    """Largest number added or subtracted (the starting amount, found or given items)."""
    max_factor: int = 5
    """Largest size of a container: products stay inside a times table a tiny model can learn."""
    max_result: int = 50
    """Largest intermediate result; larger draws are rejected."""
    distractor_prob: float = 0.3
    """Probability that a problem carries a sentence with an unused number."""

    def validate(self, key: str) -> None:
        _check(2 <= self.min_steps <= self.max_steps <= 6, f"{key}.min_steps/max_steps",
               f"need 2 <= min_steps <= max_steps <= 6, got {self.min_steps}..{self.max_steps}")
        _check(min(self.n_train, self.n_test, self.n_validation) >= 0, f"{key}.n_train", "split sizes must be >= 0")
        _check(self.max_operand >= 10, f"{key}.max_operand", "must be >= 10")
        _check(self.max_factor >= 3, f"{key}.max_factor", "must be >= 3")
        _check(self.max_result >= 4 * self.max_operand, f"{key}.max_result",
               "must be >= 4 * max_operand so that every problem type can be drawn")
        _check(0.0 <= self.distractor_prob <= 1.0, f"{key}.distractor_prob", "must be in [0, 1]")


@dataclass
class DataConfig:
    """Where problems come from."""

    source: Literal["organism", "files"] = "organism"
    """`organism` generates problems; `files` reads train_path/test_path (GSM8K, SVAMP or ours)."""
    train_path: str = ""
    """Train problems (local path or s3://, gs://, file:// URI) when source is `files`."""
    test_path: str = ""
    """Test problems when source is `files`."""
    validation_path: str = ""
    """Validation problems when source is `files` (optional; needed for `eval.split: validation`)."""
    keep_calculator: bool = False
    """Keep GSM8K calculator annotations like <<48/2=24>> in gold steps."""
    organism: OrganismConfig = field(default_factory=OrganismConfig)

    def validate(self, key: str) -> None:
        if self.source == "files":
            _check(bool(self.train_path and self.test_path), f"{key}.train_path",
                   "source 'files' needs both train_path and test_path")
        self.organism.validate(f"{key}.organism")


@dataclass
class ModelConfig:
    """The policy's starting point: a pretrained Hugging Face folder, or a tiny Llama built from
    scratch (the model organism's) when `pretrained` is empty."""

    pretrained: str = ""
    """A Hugging Face model folder every node can read (e.g. LLaMA-2 13B on shared storage)."""
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    """hidden_size / num_heads is the head dim; vLLM's CPU attention needs 32, 64, 80, 96, 112 or 128."""
    intermediate_size: int = 512
    vocab_size: int = 512
    """Target size of the byte-level BPE vocabulary trained on the task's text."""
    max_position_embeddings: int = 512
    tie_word_embeddings: bool = True

    def validate(self, key: str) -> None:
        _check(self.hidden_size % self.num_heads == 0, f"{key}.num_heads", "must divide hidden_size")
        head_dim = self.hidden_size // self.num_heads
        _check(head_dim in (32, 64, 80, 96, 112, 128, 160, 192, 224, 256), f"{key}.num_heads",
               f"head dim {head_dim} is not supported by vLLM's attention (use 32, 64, 80, ...)")
        _check(self.vocab_size >= 300, f"{key}.vocab_size", "byte-level BPE needs >= 300 (256 bytes + specials)")


@dataclass
class TrainConfig:
    """One training run of an objective (policy or refiner SFT, ORM/SORM step reward) on Ray Train."""

    steps: int = 300
    """Optimizer steps."""
    batch_size: int = 32
    """Examples per optimizer step, across all workers (each takes batch_size / num_workers), so
    the number of workers changes how fast a run goes, not what it computes. A tiny model learns
    more per token from small batches."""
    lr: float = 2e-3
    min_lr_ratio: float = 0.1
    """Cosine decay ends at lr * min_lr_ratio."""
    warmup_steps: int = 30
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    max_length: int = 320
    """Longest prompt + target in tokens; a longer example is an error unless skip_long is set."""
    skip_long: bool = False
    """Skip over-long examples (counted and reported) instead of failing."""
    seed: int = 0
    log_every: int = field(default=50, metadata=EXECUTION)
    strategy: Literal["ddp", "zero2", "zero3"] = "ddp"
    """Plain DDP, or DeepSpeed ZeRO stage 2 (sharded optimizer and gradients) or 3 (and parameters)."""
    num_workers: int = field(default=1, metadata=EXECUTION)
    """Ray Train workers (data-parallel ranks); must divide batch_size."""
    cpus_per_worker: float = field(default=1.0, metadata=EXECUTION)
    gpus_per_worker: float = field(default=0.0, metadata=EXECUTION)
    """0 trains on CPU (gloo); 1 gives each worker a GPU (nccl)."""
    accelerator_type: str = field(default="", metadata=EXECUTION)
    """Ray's accelerator type the GPUs must be (e.g. A100-80G, as nodes advertise it in
    `accelerator_type:<type>`); empty: any."""
    resources: dict[str, float] = field(default_factory=dict, metadata=EXECUTION)
    """Custom Ray resources each worker needs, such as a node type's marker (`{"train_node": 1}`):
    workers then run only on nodes of that type, and an autoscaler starts one for them."""
    torch_threads: int = field(default=2, metadata=EXECUTION)
    """Intra-op threads per worker; 0 keeps Ray's default (one per reserved CPU). More than the
    reserved CPUs speeds up CPU training on a node that is otherwise idle while it trains."""
    bf16: bool | None = None
    """bfloat16 mixed precision under DeepSpeed; None: on when the GPU supports it."""
    activation_checkpointing: bool = False
    """Recompute activations in the backward pass (needed for 13B at useful batch sizes)."""
    offload_optimizer: bool = False
    """ZeRO: keep optimizer states in CPU memory."""
    offload_params: bool = False
    """ZeRO-3: keep parameters in CPU memory."""
    checkpoint_every: int = field(default=200, metadata=EXECUTION)
    """Steps between checkpoints; a failed worker resumes from the last one."""
    max_failures: int = field(default=1, metadata=EXECUTION)
    """Worker failures a run survives (Ray Train restarts the group from the last checkpoint)."""
    storage_path: str = field(default="", metadata=EXECUTION)
    """Where Ray Train keeps checkpoints (local path or s3://, gs://); default: <out>.ray_train."""
    replay_rows: int = 4096
    """A worker whose data shard has at most this many rows keeps its encoded examples after the
    first epoch and replays them reshuffled, instead of re-executing the Ray Dataset every epoch
    (which dominates the time of small label sets); 0 always re-reads."""
    shuffle_buffer_rows: int = 10000
    """Rows a worker shuffles among while it streams its shard, in a new order every epoch (seeded
    by `seed` and the epoch): the files hold a question's rows together; 0 keeps file order."""

    @property
    def batch_size_per_worker(self) -> int:
        return self.batch_size // self.num_workers

    def validate(self, key: str) -> None:
        _check(self.steps > 0, f"{key}.steps", "must be > 0")
        _check(self.num_workers >= 1, f"{key}.num_workers", "must be >= 1")
        _check(self.cpus_per_worker > 0, f"{key}.cpus_per_worker", "must be > 0")
        _check(self.gpus_per_worker >= 0, f"{key}.gpus_per_worker", "must be >= 0")
        _check(not self.accelerator_type or self.gpus_per_worker > 0, f"{key}.accelerator_type",
               "needs gpus_per_worker > 0")
        _check(self.torch_threads >= 0, f"{key}.torch_threads", "must be >= 0")
        _check(self.checkpoint_every > 0, f"{key}.checkpoint_every", "must be > 0")
        _check_resources(self.resources, f"{key}.resources")
        _check(self.replay_rows >= 0, f"{key}.replay_rows", "must be >= 0")
        _check(self.shuffle_buffer_rows >= 0, f"{key}.shuffle_buffer_rows", "must be >= 0")
        _check(not self.offload_params or self.strategy == "zero3", f"{key}.offload_params",
               "parameter offload needs strategy zero3")
        _check(not self.offload_optimizer or self.strategy != "ddp", f"{key}.offload_optimizer",
               "optimizer offload needs strategy zero2 or zero3")
        _check(self.batch_size > 0, f"{key}.batch_size", "must be > 0")
        _check(self.batch_size % self.num_workers == 0, f"{key}.batch_size",
               f"{self.batch_size} does not split evenly over num_workers {self.num_workers}")
        _check(self.lr > 0, f"{key}.lr", "must be > 0")
        _check(0 <= self.min_lr_ratio <= 1, f"{key}.min_lr_ratio", "must be in [0, 1]")
        _check(0 <= self.warmup_steps < self.steps, f"{key}.warmup_steps", "must be in [0, steps)")
        _check(self.max_length > 8, f"{key}.max_length", "must be > 8")
        _check(self.log_every > 0, f"{key}.log_every", "must be > 0")


_FINE_TUNE = TrainConfig(steps=60, batch_size=16, lr=1e-3, warmup_steps=10, log_every=20, checkpoint_every=30)
"""The refiners' default: a short run from the trained policy."""
_REWARD_MODEL = dataclasses.replace(_FINE_TUNE, lr=3e-4)
"""The reward models' default (the ORM, and the SORM and PRM): the implicit PRM learnt to rank at
0.71 with 3e-4 against 0.65 with 1e-3 on validation (bench/results/verifier_study.md)."""


STEP_THRESHOLD = 0.25
"""The SORM's step threshold for "where", evaluated and served alike: chosen on the demo's
validation run for the implicit PRM head (the drafts' first-error F1 0.532, 0.0 at a value head's
0.5, whose scale an implicit PRM's values, sigmoid of a log-ratio that starts at 0, do not share;
bench/results/rerank_calibration_demo.json)."""


@dataclass
class EngineConfig:
    """The generation engine: vLLM (GPU or CPU build) or transformers `generate`."""

    backend: Literal["auto", "vllm", "hf"] = "auto"
    """`auto` uses vLLM when it imports, else transformers."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """`auto`: bfloat16 on GPU, float32 on CPU."""
    max_model_len: int = 512
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = field(default=0.85, metadata=EXECUTION)
    cpu_kv_cache_gib: int = field(default=1, metadata=EXECUTION)
    """KV cache of the vLLM CPU build in GiB (VLLM_CPU_KVCACHE_SPACE)."""
    multiprocessing: bool = field(default=False, metadata=EXECUTION)
    """Run vLLM's engine core in its own process (faster on GPU); off keeps it in-process, which
    starts several times faster on CPU (VLLM_ENABLE_V1_MULTIPROCESSING)."""
    enable_prefix_caching: bool = field(default=True, metadata=EXECUTION)
    """Reuse the KV cache of shared prompt prefixes (K samples, SORM continuations)."""
    enforce_eager: bool | None = field(default=None, metadata=EXECUTION)
    """Run the model eagerly: no torch.compile warm-up at each engine start, no CUDA graphs. None:
    eager on CPU, where the warm-up outweighs what the compiled graph saves a small model
    (bench/engine_start.py), compiled on GPU."""

    def validate(self, key: str) -> None:
        _check(self.max_model_len > 0, f"{key}.max_model_len", "must be > 0")
        _check(self.tensor_parallel_size >= 1, f"{key}.tensor_parallel_size", "must be >= 1")
        _check(0 < self.gpu_memory_utilization <= 1, f"{key}.gpu_memory_utilization", "must be in (0, 1]")
        _check(self.cpu_kv_cache_gib > 0, f"{key}.cpu_kv_cache_gib", "must be > 0")


@dataclass
class SamplingConfig:
    """Settings shared by every sampled generation (each stage sets its own n and temperature)."""

    top_p: float = 1.0
    max_tokens: int = 256
    seed: int = 0
    """Samples are a function of (seed, prompt), whatever the batching."""

    def validate(self, key: str) -> None:
        _check(0 < self.top_p <= 1, f"{key}.top_p", "must be in (0, 1]")
        _check(self.max_tokens > 0, f"{key}.max_tokens", "must be > 0")


@dataclass
class EnginePoolConfig:
    """The engine replicas of a Ray Data stage: an actor pool, one engine per replica."""

    replicas: int = 1
    cpus_per_replica: float = 0.5
    """Keep it fractional on CPU machines: a pool holding every CPU starves Ray Data's read tasks."""
    gpus_per_replica: float = 0.0
    """GPUs per replica: engine.tensor_parallel_size of them on a cluster, 0 on CPU."""
    accelerator_type: str = ""
    """Ray's accelerator type the GPUs must be (e.g. A100-80G, as nodes advertise it in
    `accelerator_type:<type>`); empty: any."""
    batch_size: int = 16
    """Questions per engine call."""
    resources: dict[str, float] = field(default_factory=dict)
    """Custom Ray resources each replica needs, such as a node type's marker as the cluster files
    declare it (`{"engine_node": 1}`): replicas then run only on nodes of that type, and an
    autoscaler starts one for them."""
    cpu_threads: int = 0
    """Torch threads of each replica on CPU (gpus_per_replica 0). Ray gives an actor with a fraction
    of a CPU one thread (OMP_NUM_THREADS=1), which runs the engine at a fraction of the machine's
    speed; 0: the node's CPUs (as Ray counts them) over the pool's replicas."""

    def threads_per_replica(self, node_cpus: int) -> int | None:
        """What a replica sets torch's threads to; None on GPU (leave Ray's setting)."""
        if self.gpus_per_replica:
            return None
        return self.cpu_threads or max(1, node_cpus // self.replicas)

    def validate(self, key: str) -> None:
        _check(self.replicas >= 1, f"{key}.replicas", "must be >= 1")
        _check(self.cpu_threads >= 0, f"{key}.cpu_threads", "must be >= 0")
        _check_resources(self.resources, f"{key}.resources")
        _check(self.cpus_per_replica > 0, f"{key}.cpus_per_replica", "must be > 0")
        _check(self.gpus_per_replica >= 0, f"{key}.gpus_per_replica", "must be >= 0")
        _check(not self.accelerator_type or self.gpus_per_replica > 0, f"{key}.accelerator_type",
               "needs gpus_per_replica > 0")
        _check(self.batch_size >= 1, f"{key}.batch_size", "must be >= 1")


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
    `orm_threshold`."""
    orm_threshold: float = 0.5
    step_threshold: float = STEP_THRESHOLD
    """The first step whose SORM value is below this is where the local refiner starts (the
    value's scale is the head's: choose it on validation, bench/rerank_calibration.py)."""
    orm_step_threshold: float = 0.15
    """The same for the "where: ORM" baseline's step values (the demo's validation choice: the
    drafts' first-error F1 0.625, 0.0 at 0.5; bench/results/rerank_calibration_demo.json)."""
    global_offset: float = 0.0
    """Added to the global refinement's ORM logit in the rerank (the draft's is 0): the ranker
    calibrated per candidate source, fit on validation (bench/rerank_calibration.py)."""
    local_offset: float = 0.0
    """The same for the local refinement."""
    refine_samples: int = 1
    """Refinements per refiner (beyond the paper): the first greedy, the others sampled at
    `temperature`; the reranker chooses among the draft and all of them, and the rerank oracle is
    over all of them."""
    max_rounds: int = 1
    """Iterated refinement (beyond the paper): after the first round, a question whose chosen
    candidate the ORM (or the reranker) scores below `orm_threshold` is refined again from that
    candidate, the refiners sampling at `temperature` (greedy refiners would repeat the first
    round's rewrites), up to this many rounds in all; each round is a row of the report."""
    pool: EnginePoolConfig = field(default_factory=lambda: EnginePoolConfig(cpus_per_replica=0.25, batch_size=64), metadata=EXECUTION)
    """Resources per model served (each in its own actor, or all in one when cpus_per_replica is
    a fraction and gpus_per_replica 0); batch_size is questions per ensemble call."""

    def validate(self, key: str) -> None:
        _check(self.n_problems > 0, f"{key}.n_problems", "must be > 0")
        _check(self.k >= 1, f"{key}.k", "must be >= 1")
        _check(self.max_rounds >= 1, f"{key}.max_rounds", "must be >= 1")
        _check(self.refine_samples >= 1, f"{key}.refine_samples", "must be >= 1")
        _check(self.temperature > 0, f"{key}.temperature", "must be > 0 (greedy is always measured)")
        for name in ("orm_threshold", "step_threshold", "orm_step_threshold"):
            _check(0 <= getattr(self, name) <= 1, f"{key}.{name}", "must be in [0, 1]")
        _check_offsets(self, key)
        self.pool.validate(f"{key}.pool")


def _check_offsets(section, key: str) -> None:
    for name in ("global_offset", "local_offset"):
        _check(math.isfinite(getattr(section, name)), f"{key}.{name}", "must be a finite number")


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
    accelerator_type: str = ""
    """Ray's accelerator type the GPUs must be (e.g. A100-80G, as nodes advertise it in
    `accelerator_type:<type>`); empty: any."""
    resources: dict[str, float] = field(default_factory=dict)
    """Custom Ray resources each replica needs, such as a node type's marker (`{"serve_node": 1}`)."""
    max_batch_size: int = 16
    """Requests merged into one call (`@serve.batch`): of the ensemble at the ingress, of the
    engine or scorer at a model; 1 turns batching off."""
    batch_wait_timeout_s: float = 0.01
    """How long a batch waits to fill once its first request is in."""
    max_ongoing_requests: int = 64
    """Requests a replica accepts at once; keep it >= max_batch_size or batches never fill."""

    def validate(self, key: str) -> None:
        _check(1 <= self.min_replicas <= self.max_replicas, f"{key}.min_replicas/max_replicas",
               f"need 1 <= min_replicas <= max_replicas, got {self.min_replicas} and {self.max_replicas}")
        _check(self.target_ongoing_requests > 0, f"{key}.target_ongoing_requests", "must be > 0")
        _check(self.cpus > 0, f"{key}.cpus", "must be > 0")
        _check(self.gpus >= 0, f"{key}.gpus", "must be >= 0")
        _check(not self.accelerator_type or self.gpus > 0, f"{key}.accelerator_type",
               "needs gpus > 0")
        _check_resources(self.resources, f"{key}.resources")
        _check(self.max_batch_size >= 1, f"{key}.max_batch_size", "must be >= 1")
        _check(self.batch_wait_timeout_s >= 0, f"{key}.batch_wait_timeout_s", "must be >= 0")
        _check(self.max_ongoing_requests >= self.max_batch_size, f"{key}.max_ongoing_requests",
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
    always_refine: bool = False
    """Refine every draft, or (the default online) only those the ORM scores below orm_threshold;
    a request's own settings override these three."""
    orm_threshold: float = 0.5
    step_threshold: float = STEP_THRESHOLD
    global_offset: float = 0.0
    """Per candidate source offsets of the rerank, as `eval`'s (set them to the values the run's
    evaluation used)."""
    local_offset: float = 0.0
    ingress: ModelDeploymentConfig = field(default_factory=lambda: ModelDeploymentConfig(batch_wait_timeout_s=0.05))
    """The FastAPI deployment running the ensemble: it batches whole requests (one ensemble call,
    so one call per model and step, for a batch of questions)."""
    policy: ModelDeploymentConfig = field(default_factory=ModelDeploymentConfig)
    global_refiner: ModelDeploymentConfig = field(default_factory=ModelDeploymentConfig)
    local_refiner: ModelDeploymentConfig = field(default_factory=ModelDeploymentConfig)
    orm: ModelDeploymentConfig = field(default_factory=ModelDeploymentConfig)
    sorm: ModelDeploymentConfig = field(default_factory=ModelDeploymentConfig)

    def validate(self, key: str) -> None:
        _check(0 < self.port < 65536, f"{key}.port", "must be in [1, 65535]")
        _check(self.model_timeout_s > 0, f"{key}.model_timeout_s", "must be > 0")
        _check(self.max_question_chars > 0, f"{key}.max_question_chars", "must be > 0")
        _check(self.max_draft_chars > 0, f"{key}.max_draft_chars", "must be > 0")
        _check_offsets(self, key)
        for name in ("orm_threshold", "step_threshold"):
            _check(0 <= getattr(self, name) <= 1, f"{key}.{name}", "must be in [0, 1]")
        for name in ("ingress", *MODELS):
            getattr(self, name).validate(f"{key}.{name}")


@dataclass
class ExpertIterationConfig:
    """Rounds of: sample K solutions per training question, keep the correct ones (de-duplicated),
    fine-tune the policy on them together with the gold solutions."""

    rounds: int = 0
    k: int = 4
    temperature: float = 1.0
    max_questions: int = 200
    """Training questions sampled per round (the first n); 0 uses all."""
    steps: int = 40
    """SFT steps per round, continuing from the current policy (the other settings are `policy`'s)."""
    lr: float = 1e-3
    """Peak learning rate of a round: a trained policy is fine-tuned, not trained again from the
    policy's peak."""
    warmup_steps: int = 5
    """Warm-up of a round (its optimizer state starts afresh)."""

    def training(self, policy: TrainConfig) -> TrainConfig:
        """A round's training run: the policy's settings with the round's steps and schedule."""
        return dataclasses.replace(policy, steps=self.steps, lr=self.lr, warmup_steps=self.warmup_steps)

    def validate(self, key: str) -> None:
        _check(self.rounds >= 0, f"{key}.rounds", "must be >= 0")
        _check(self.k >= 1, f"{key}.k", "must be >= 1")
        _check(self.temperature > 0, f"{key}.temperature", "must be > 0: greedy samples are all alike")
        _check(self.max_questions >= 0, f"{key}.max_questions", "must be >= 0")
        _check(self.steps >= 1, f"{key}.steps", "must be >= 1")
        _check(self.lr > 0, f"{key}.lr", "must be > 0")
        _check(0 <= self.warmup_steps < self.steps, f"{key}.warmup_steps", "must be in [0, steps)")


@dataclass
class RolloutConfig:
    """K policy samples per training question: the data of every reward model and refiner."""

    k: int = 4
    temperature: float = 1.0
    max_questions: int = 150
    """Use the first n questions of the input; 0 uses all."""
    greedy: bool = True
    """Also keep each question's greedy solution: the reward models judge greedy texts (the draft,
    the refiners' outputs) at evaluation, so they should train on some."""
    disjoint_from_expert_iteration: bool = True
    """Draw the reward models' questions from after the `expert_iteration.max_questions` the policy
    was just trained on (they would judge solutions the policy has fitted); false reuses them, as
    the paper does on GSM8K's 7.5k questions."""
    pool: EnginePoolConfig = field(default_factory=lambda: EnginePoolConfig(batch_size=64), metadata=EXECUTION)
    """64 questions per engine call: vLLM batches a call's sequences continuously, and a call ends
    with its longest one, so small calls leave the engine idle (bench/labels.py, rollout stage vs
    a bare engine)."""

    def validate(self, key: str) -> None:
        _check(self.k >= 1, f"{key}.k", "must be >= 1")
        _check(self.temperature > 0, f"{key}.temperature", "must be > 0: greedy samples are all alike")
        _check(self.max_questions >= 0, f"{key}.max_questions", "must be >= 0")
        self.pool.validate(f"{key}.pool")


@dataclass
class LabelConfig:
    """SORM step labels from policy continuations of each step prefix."""

    mode: Literal["efficient", "exhaustive"] = "efficient"
    """`exhaustive`: K continuations of every prefix (the paper); `efficient`: the same rule with
    shared prefixes, a binary search for the first negative step and early stopping."""
    k: int = 4
    """Continuations per prefix (at most, in efficient mode)."""
    temperature: float = 1.0
    round_size: int = 1
    """Efficient mode: continuations per prefix per round; a prefix stops at its first good one."""
    balance: bool = True
    """Weight the SORM's and PRM's step labels so that positives and negatives carry equal weight at
    every step index (each row keeps all its labels: cutting rows at the majority label kept 13% of
    the organism benchmark's PRM labels)."""
    seed: int = 0
    prm: bool = False
    """On the model organism, also train a PRM: the SORM's model and training on the exact checker's
    step labels of the same rollouts, the upper bound for "where" (reported, never served)."""
    pool: EnginePoolConfig = field(default_factory=EnginePoolConfig, metadata=EXECUTION)

    def validate(self, key: str) -> None:
        _check(self.k >= 1, f"{key}.k", "must be >= 1")
        _check(self.temperature > 0, f"{key}.temperature", "must be > 0")
        _check(1 <= self.round_size <= self.k, f"{key}.round_size", "must be in [1, k]")
        self.pool.validate(f"{key}.pool")


@dataclass
class RewardModelConfig:
    """How the ORM, SORM and PRM read a solution: one recipe for the three, so that they differ
    only in their labels (bench/verifier_study.py compares the recipes)."""

    head: Literal["value", "implicit"] = "implicit"
    """`implicit`: the implicit PRM, beta * log(pi / pi_ref) summed over the solution's tokens up to
    each step's newline, pi fine-tuned from the policy pi_ref (arXiv 2412.01981;
    `training.objectives`); `value`: a new scalar head on the policy's body, its logit at each
    step's newline (the paper's). Chosen on validation: the PRM ranked a question's draft and
    samples at 0.71 within-question AUROC as an implicit PRM, 0.62 with a value head, at the same
    data and steps (bench/results/verifier_study.md)."""
    beta: float = 0.1
    """The implicit PRM's beta."""

    def validate(self, key: str) -> None:
        _check(self.beta > 0, f"{key}.beta", "must be > 0")


@dataclass
class RerankerConfig:
    """What ranks a question's candidates (the best-of-k baselines, and the ensemble's when and
    rerank): the ORM, or with `likelihood` the ORM's value combined with the policy's own mean token
    log-probability of the solution, three weights fitted on the ORM's training rows. A small ORM
    ranks the solutions of one question near chance where the policy's likelihood does not
    (bench/orm_ranking.py); the reward models' own rows are reported either way."""

    likelihood: bool = True
    """Rank with the ORM and the policy's likelihood (a `reranker` stage fits the weights)."""
    fit_rows: int = 4000
    """Held-out ORM rows (solutions) the weights are fitted on, at most."""
    heldout_share: float = 0.1
    """Share of the rollouts' questions (by a hash of their id) that no reward model trains on: the
    weights are fitted on their ORM rows, not on rows the ORM has fitted."""
    objective: Literal["within_question", "pooled"] = "within_question"
    """`within_question`: the weights rank the solutions of one question (pairs of a right and a
    wrong solution), the bias then set so the mean P(correct) is the share right; `pooled`: one logistic regression
    of correctness over all solutions, which also rewards telling easy questions from hard ones."""

    def validate(self, key: str) -> None:
        _check(self.fit_rows >= 1, f"{key}.fit_rows", "must be >= 1")
        _check(0 < self.heldout_share < 1, f"{key}.heldout_share", "must be in (0, 1)")


@dataclass
class PairsConfig:
    """The refiners' training pairs: a wrong rollout and a right one of the same question (global),
    a wrong rollout's bad continuation and a good one from its first negative step (local)."""

    identity_share: float = 0.15
    """Share of the right rollouts (by a stable hash of their id) also paired with themselves, for
    the global refiner as written and for the local one marked at one of their steps: with
    `eval.always_refine` the refiners rewrite right drafts too, and should keep them right (on the
    organism benchmark's validation, 0.15 took the global refiner's broken share from 20.0% to 14.3%:
    bench/results/refiner_study.json)."""
    reference_targets: bool = True
    """Pair the wrong rollouts of a question with no right rollout with its reference solution
    (where the data has one): the greedy drafts the global refiner rewrites are mostly wrong on
    exactly those questions, which policy-only pairs never show it (validation: fixed 12.6% -> 21.6%)."""

    def validate(self, key: str) -> None:
        _check(0 <= self.identity_share <= 1, f"{key}.identity_share", "must be in [0, 1]")


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
        _check(self.eval.split != "validation" or self.data.source == "organism" or bool(self.data.validation_path),
               "eval.split", "validation needs data.validation_path when data.source is 'files'")
        if self.expert_iteration.rounds:
            self.expert_iteration.training(self.policy).validate("expert_iteration (with policy's settings)")
            _check(not self.rollouts.disjoint_from_expert_iteration or self.expert_iteration.max_questions > 0,
                   "rollouts.disjoint_from_expert_iteration",
                   "expert iteration trains on every training question (expert_iteration.max_questions 0), so the "
                   "reward models' questions cannot be disjoint from them: limit expert_iteration.max_questions, "
                   "or set this to false to reuse them")
        _check(self.engine.max_model_len <= self.model.max_position_embeddings, "engine.max_model_len",
               f"{self.engine.max_model_len} exceeds model.max_position_embeddings "
               f"{self.model.max_position_embeddings}")
        gpu_replicas = [(f"{key}.gpus_per_replica", pool.gpus_per_replica) for key, pool in (
            ("rollouts.pool", self.rollouts.pool), ("labels.pool", self.labels.pool), ("eval.pool", self.eval.pool))]
        gpu_replicas += [(f"serve.{m}.gpus", getattr(self.serve, m).gpus) for m in GENERATORS]
        for key, gpus in gpu_replicas:
            # A replica holds one engine, sharded over tensor_parallel_size GPUs.
            _check(gpus == 0 or gpus >= self.engine.tensor_parallel_size, key,
                   f"{gpus} GPUs cannot hold an engine with engine.tensor_parallel_size "
                   f"{self.engine.tensor_parallel_size}")


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {message}")


def _check_resources(resources: dict[str, float], key: str) -> None:
    """Custom Ray resources (a node type's marker) are positive amounts."""
    for name, amount in resources.items():
        _check(amount > 0, f"{key}.{name}", "must be > 0")


def _coerce(value: Any, tp: Any, key: str, default: Any = None) -> Any:
    """Convert a YAML value to the annotated type, or fail naming the key. A section is built over
    its `default` (the parent's default for it), so unnamed keys keep that section's defaults."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping (section), got {type(value).__name__} {value!r}")
        return _build(tp, value, key, default)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(repr, choices))}")
        return value
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__} {value!r}")
        key_tp, value_tp = typing.get_args(tp)
        return {_coerce(k, key_tp, f"{key} (a key)"): _coerce(v, value_tp, f"{key}.{k}") for k, v in value.items()}
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__} {value!r}")
        (item_tp, *_) = typing.get_args(tp)
        return origin(_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value))
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        (inner,) = [o for o in options if o is not type(None)]
        return _coerce(value, inner, key)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # YAML 1.1 reads `1e-3` (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    # bool is an int in Python; a YAML `1` for a bool flag (or `true` for a count) is a mistake.
    if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
        raise ConfigError(f"{key}: expected {tp.__name__}, got {type(value).__name__} {value!r}")
    return value


def _build(cls: type, values: dict, prefix: str, base: Any = None) -> Any:
    """`values` over `base` (default: the class's defaults): the eval section's pool keeps its own
    defaults (0.25 CPUs) when a YAML or an override names only its batch size."""
    base = cls() if base is None else base
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for name, value in values.items():
        key = f"{prefix}.{name}" if prefix else str(name)
        if name not in names:
            raise ConfigError(f"{key}: unknown key (valid keys here: {', '.join(sorted(names))})")
        kwargs[name] = _coerce(value, hints[name], key, getattr(base, name))
    return dataclasses.replace(base, **kwargs)


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = tree
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{dotted}: '{part}' is a value, not a section")
    node[leaf] = value


def parse_override(text: str) -> tuple[str, Any]:
    """`engine.temperature=0.7` -> ("engine.temperature", 0.7); values are parsed as YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r}: expected KEY=VALUE, e.g. engine.temperature=0.7")
    return key.strip(), yaml.safe_load(raw) if raw.strip() else ""


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> GloreConfig:
    """Defaults <- YAML file <- dotted overrides, then validation."""
    tree: dict = {}
    if path is not None:
        try:
            tree = yaml.safe_load(Path(path).read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: invalid YAML: {e}") from e
        if not isinstance(tree, dict):
            raise ConfigError(f"{path}: top level must be a mapping of sections")
    for text in overrides:
        _set_dotted(tree, *parse_override(text))
    try:
        config = _build(GloreConfig, tree, "")
        config.validate()
    except ConfigError as e:
        raise ConfigError(f"{path or 'config'}: {e}") from None
    return config


def field_docs(cls: type) -> dict[str, str]:
    """Each field's documentation: the string literal after it in the class body (read from the
    source, as vLLM derives its CLI help; dataclasses keep no attribute docstrings at run time)."""
    import ast
    import inspect
    import textwrap

    body = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0].body
    return {node.target.id: inspect.cleandoc(after.value.value) for node, after in zip(body, body[1:])
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
            and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)}


def describe_config(section: Any, indent: int = 0) -> str:
    """The effective configuration as YAML that `load_config` reads back, each field under its
    documentation as comments."""
    import inspect
    import json

    pad, lines = " " * indent, []
    docs = field_docs(type(section))
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        lines += [f"{pad}# {line}".rstrip() for line in docs.get(f.name, "").splitlines()]
        if dataclasses.is_dataclass(value):
            if f.name not in docs and type(value).__doc__:  # a section without its own: its class's
                lines += [f"{pad}# {line}".rstrip() for line in inspect.cleandoc(type(value).__doc__).splitlines()]
            lines += [f"{pad}{f.name}:", describe_config(value, indent + 2)]
        else:
            # JSON scalars and lists are YAML too: strings quoted, booleans and null as YAML spells them.
            lines.append(f"{pad}{f.name}: {json.dumps(list(value) if isinstance(value, tuple) else value)}")
    return "\n".join(lines)


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
