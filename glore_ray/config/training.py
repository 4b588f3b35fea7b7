"""The training runs (Ray Train): each objective's optimisation, schedule, parallelism and
checkpoints, expert iteration's rounds, the reward models' head, the reranker's fit and the
refiners' pairs."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

from glore_ray.config.fields import EXECUTION, check, check_resources


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
        check(self.steps > 0, f"{key}.steps", "must be > 0")
        check(self.num_workers >= 1, f"{key}.num_workers", "must be >= 1")
        check(self.cpus_per_worker > 0, f"{key}.cpus_per_worker", "must be > 0")
        check(self.gpus_per_worker >= 0, f"{key}.gpus_per_worker", "must be >= 0")
        check(not self.accelerator_type or self.gpus_per_worker > 0, f"{key}.accelerator_type",
               "needs gpus_per_worker > 0")
        check(self.torch_threads >= 0, f"{key}.torch_threads", "must be >= 0")
        check(self.checkpoint_every > 0, f"{key}.checkpoint_every", "must be > 0")
        check_resources(self.resources, f"{key}.resources")
        check(self.replay_rows >= 0, f"{key}.replay_rows", "must be >= 0")
        check(self.shuffle_buffer_rows >= 0, f"{key}.shuffle_buffer_rows", "must be >= 0")
        check(not self.offload_params or self.strategy == "zero3", f"{key}.offload_params",
               "parameter offload needs strategy zero3")
        check(not self.offload_optimizer or self.strategy != "ddp", f"{key}.offload_optimizer",
               "optimizer offload needs strategy zero2 or zero3")
        check(self.batch_size > 0, f"{key}.batch_size", "must be > 0")
        check(self.batch_size % self.num_workers == 0, f"{key}.batch_size",
               f"{self.batch_size} does not split evenly over num_workers {self.num_workers}")
        check(self.lr > 0, f"{key}.lr", "must be > 0")
        check(0 <= self.min_lr_ratio <= 1, f"{key}.min_lr_ratio", "must be in [0, 1]")
        check(0 <= self.warmup_steps < self.steps, f"{key}.warmup_steps", "must be in [0, steps)")
        check(self.max_length > 8, f"{key}.max_length", "must be > 8")
        check(self.log_every > 0, f"{key}.log_every", "must be > 0")


_FINE_TUNE = TrainConfig(steps=60, batch_size=16, lr=1e-3, warmup_steps=10, log_every=20, checkpoint_every=30)
"""The refiners' default: a short run from the trained policy."""
_REWARD_MODEL = dataclasses.replace(_FINE_TUNE, lr=3e-4)
"""The reward models' default (the ORM, and the SORM and PRM): the implicit PRM learnt to rank at
0.71 with 3e-4 against 0.65 with 1e-3 on validation (bench/results/verifier_study.md)."""


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
        check(self.rounds >= 0, f"{key}.rounds", "must be >= 0")
        check(self.k >= 1, f"{key}.k", "must be >= 1")
        check(self.temperature > 0, f"{key}.temperature", "must be > 0: greedy samples are all alike")
        check(self.max_questions >= 0, f"{key}.max_questions", "must be >= 0")
        check(self.steps >= 1, f"{key}.steps", "must be >= 1")
        check(self.lr > 0, f"{key}.lr", "must be > 0")
        check(0 <= self.warmup_steps < self.steps, f"{key}.warmup_steps", "must be in [0, steps)")


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
        check(self.beta > 0, f"{key}.beta", "must be > 0")


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
        check(self.fit_rows >= 1, f"{key}.fit_rows", "must be >= 1")
        check(0 < self.heldout_share < 1, f"{key}.heldout_share", "must be in (0, 1)")


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
        check(0 <= self.identity_share <= 1, f"{key}.identity_share", "must be in [0, 1]")
