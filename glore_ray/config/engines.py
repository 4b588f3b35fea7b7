"""Generation: the engine, sampling, and the engine pools of the Ray Data stages (rollouts, labels)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from glore_ray.config.fields import EXECUTION, check, check_resources


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
        check(self.max_model_len > 0, f"{key}.max_model_len", "must be > 0")
        check(self.tensor_parallel_size >= 1, f"{key}.tensor_parallel_size", "must be >= 1")
        check(0 < self.gpu_memory_utilization <= 1, f"{key}.gpu_memory_utilization", "must be in (0, 1]")
        check(self.cpu_kv_cache_gib > 0, f"{key}.cpu_kv_cache_gib", "must be > 0")


@dataclass
class SamplingConfig:
    """Settings shared by every sampled generation (each stage sets its own n and temperature)."""

    top_p: float = 1.0
    max_tokens: int = 256
    seed: int = 0
    """Samples are a function of (seed, prompt), whatever the batching."""

    def validate(self, key: str) -> None:
        check(0 < self.top_p <= 1, f"{key}.top_p", "must be in (0, 1]")
        check(self.max_tokens > 0, f"{key}.max_tokens", "must be > 0")


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
        check(self.replicas >= 1, f"{key}.replicas", "must be >= 1")
        check(self.cpu_threads >= 0, f"{key}.cpu_threads", "must be >= 0")
        check_resources(self.resources, f"{key}.resources")
        check(self.cpus_per_replica > 0, f"{key}.cpus_per_replica", "must be > 0")
        check(self.gpus_per_replica >= 0, f"{key}.gpus_per_replica", "must be >= 0")
        check(not self.accelerator_type or self.gpus_per_replica > 0, f"{key}.accelerator_type",
               "needs gpus_per_replica > 0")
        check(self.batch_size >= 1, f"{key}.batch_size", "must be >= 1")


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
        check(self.k >= 1, f"{key}.k", "must be >= 1")
        check(self.temperature > 0, f"{key}.temperature", "must be > 0: greedy samples are all alike")
        check(self.max_questions >= 0, f"{key}.max_questions", "must be >= 0")
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
        check(self.k >= 1, f"{key}.k", "must be >= 1")
        check(self.temperature > 0, f"{key}.temperature", "must be > 0")
        check(1 <= self.round_size <= self.k, f"{key}.round_size", "must be in [1, k]")
        self.pool.validate(f"{key}.pool")
