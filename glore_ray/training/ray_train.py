"""One Ray Train runner for all five objectives, under DDP or DeepSpeed ZeRO-2/3.

The driver side (`fit`) builds the TorchTrainer from the config; each worker (`Trainer`) streams
its shard of the Ray Dataset, runs `loop.train_steps` under its strategy, checkpoints every N steps
through `ray.train.report`, and finally exports a Hugging Face folder inside the last checkpoint,
which the driver copies to `out`. A worker that dies is restarted from the last checkpoint
(FailureConfig) and the run still ends after `steps` optimizer steps.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from glore_ray.capacity import request, require
from glore_ray.config import TrainConfig
from glore_ray.metrics import StageMetrics
from glore_ray.training.objectives import Objective
from glore_ray.training.objectives import objective as objective_spec

log = logging.getLogger(__name__)
META = "meta.json"
EXPORT = "hf"


def read_rows(path: str):
    """A Ray Dataset of training rows from Parquet (a file or a directory) or JSONL, local or s3/gs."""
    import ray.data

    return ray.data.read_json(path) if path.endswith((".jsonl", ".json")) else ray.data.read_parquet(path)


def export_untrained(objective: str | Objective, init_model: str, out: str) -> None:
    """The model `fit` would start from, exported as the result: the initial causal LM, or for a
    reward model its body with a new (seeded) value head."""
    import torch
    from transformers import AutoTokenizer

    torch.manual_seed(0)
    objective_spec(objective).load_model(init_model).save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(init_model).save_pretrained(out)


def fit(objective: str | Objective, cfg: TrainConfig, data: str, init_model: str, out: str, run_name: str,
        metrics: StageMetrics | None = None, progress=None) -> dict:
    """Train `objective` from the Hugging Face folder `init_model` on `data`; write the result to
    `out` and return the run's summary (steps, first and last logged loss, skipped_long,
    resumed_from). Rank 0 records loss, steps and throughput as `metrics` (default: stage = the
    objective, run = `run_name`) and, given a `progress` counters actor, reports its step and loss
    to it at every log."""
    import ray.train
    from ray.train.torch import TorchTrainer

    objective = objective_spec(objective)  # an unknown name fails here, not in every worker
    resources = request(cfg.cpus_per_worker, cfg.gpus_per_worker, resources=cfg.resources)  # the accelerator: below
    require(objective, request(cfg.cpus_per_worker, cfg.gpus_per_worker, cfg.accelerator_type, cfg.resources))
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={"objective": objective, "cfg": cfg, "init_model": os.path.abspath(init_model),
                           "metrics": metrics or StageMetrics(objective.name, run_name), "progress": progress},
        scaling_config=ray.train.ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.gpus_per_worker > 0,
                                               resources_per_worker=resources,
                                               accelerator_type=cfg.accelerator_type or None),
        run_config=ray.train.RunConfig(
            name=run_name, storage_path=cfg.storage_path or os.path.abspath(out) + ".ray_train",
            failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2)),
        datasets={"train": read_rows(data)},
    )
    result = trainer.fit()
    with result.checkpoint.as_directory() as checkpoint:
        shutil.rmtree(out, ignore_errors=True)
        shutil.copytree(Path(checkpoint) / EXPORT, out)
        meta = json.loads((Path(checkpoint) / META).read_text())
    skipped = f", {meta['skipped_long']} over-long rows skipped" if meta.get("skipped_long") else ""
    log.info(f"{objective.name}: {meta['step']} steps, final loss {meta['loss']:.4f}{skipped} -> {out}")
    return meta


def _plain(value: Any) -> Any:
    """Ray Data's numpy batches hold list columns as object arrays of arrays: back to Python."""
    return value.tolist() if hasattr(value, "tolist") else value


def epoch_seed(seed: int, epoch: int) -> int:
    """The shuffle seed of one epoch: every epoch a new order, the same one on a re-run."""
    return seed * 1_000_003 + epoch


def row_batches(shard, objective: str | Objective, tokenizer, cfg: TrainConfig,
                on_skip: Callable[[], None] = lambda: None) -> Iterator[dict]:
    """Endless collated batches from a Ray Data shard, epoch after epoch, each epoch in a new order.

    Rows arrive in file order (a question's rollouts together), so every epoch is shuffled with a
    seed from `cfg.seed` and the epoch: within a `shuffle_buffer_rows` window while streaming, and
    wholly when a shard of at most `replay_rows` rows is replayed from memory after its first
    epoch. Batches hold `cfg.batch_size_per_worker` rows. Over-long rows fail the run (naming the
    row) unless `skip_long`, which reports each to `on_skip`."""
    from glore_ray.models.encoding import ExampleTooLong, collate

    spec, batch_size = objective_spec(objective), cfg.batch_size_per_worker

    kept: list | None = [] if cfg.replay_rows else None
    epoch = 0
    while True:
        if epoch and kept:
            order = random.Random(epoch_seed(cfg.seed, epoch)).sample(kept, len(kept))
            for start in range(0, len(order), batch_size):
                yield collate(order[start:start + batch_size], tokenizer.pad_token_id)
            epoch += 1
            continue
        for batch in shard.iter_batches(batch_size=batch_size, batch_format="numpy",
                                        local_shuffle_buffer_size=cfg.shuffle_buffer_rows or None,
                                        local_shuffle_seed=epoch_seed(cfg.seed, epoch)):
            examples = []
            n_rows = len(next(iter(batch.values())))
            for i in range(n_rows):
                row = {k: _plain(v[i]) for k, v in batch.items()}
                try:
                    examples.append(spec.encode(tokenizer, row, cfg.max_length))
                except ExampleTooLong:
                    if not cfg.skip_long:
                        raise
                    if epoch == 0:  # the first pass over the shard counts each row once
                        on_skip()
            if kept is not None:
                kept.extend(examples)
                if len(kept) > cfg.replay_rows:
                    kept = None
            if examples:
                yield collate(examples, tokenizer.pad_token_id)
        epoch += 1


class Trainer:
    """One Ray Train worker's run: the objective's model under its strategy, resumed from the last
    checkpoint if there is one, trained to `cfg.steps`, checkpointed and exported."""

    def __init__(self, objective: str | Objective, cfg: TrainConfig, init_model: str, metrics: StageMetrics,
                 progress=None):
        import ray.train
        import torch
        from transformers import AutoTokenizer

        from glore_ray.training.strategy import DeepSpeedStrategy, TorchStrategy, deepspeed_config

        self.objective, self.cfg, self.metrics, self.progress = objective_spec(objective), cfg, metrics, progress
        self.rank = ray.train.get_context().get_world_rank()
        torch.manual_seed(cfg.seed)
        if cfg.torch_threads:
            torch.set_num_threads(cfg.torch_threads)
        on_gpu = torch.cuda.is_available() and cfg.gpus_per_worker > 0
        bf16 = (on_gpu and torch.cuda.is_bf16_supported()) if cfg.bf16 is None else cfg.bf16
        ds_config = deepspeed_config(cfg, bf16) if cfg.strategy != "ddp" else None
        if cfg.strategy == "zero3":
            # Kept alive while loading: from_pretrained then partitions parameters as it reads them
            # (zero.Init) instead of materialising the whole model on every rank.
            from transformers.integrations import HfDeepSpeedConfig

            hf_ds_config = HfDeepSpeedConfig(ds_config)  # noqa: F841
        model = self.objective.load_model(init_model)
        self.reference = self._reference(init_model, on_gpu, bf16) if self.objective.needs_reference else None
        self.tokenizer = AutoTokenizer.from_pretrained(init_model)
        if cfg.activation_checkpointing:
            model.gradient_checkpointing_enable()
        self.strategy = (TorchStrategy(model, cfg, self.rank, wrap=ray.train.torch.prepare_model)
                         if ds_config is None else DeepSpeedStrategy(model, cfg, ds_config, self.rank))
        self.summary = {"loss": float("nan"), "resumed_from": None, "skipped_long": 0}
        self.start_step = self.logged_step = 0
        checkpoint = ray.train.get_checkpoint()
        if checkpoint is not None:
            with checkpoint.as_directory() as d:
                resumed = json.loads((Path(d) / META).read_text())
                self.strategy.load(Path(d))
            self.start_step = self.logged_step = self.summary["resumed_from"] = resumed["step"]

    @staticmethod
    def _reference(init_model: str, on_gpu: bool, bf16: bool):
        """The frozen initial model an implicit PRM's loss compares against: a whole copy on every
        worker (not sharded by ZeRO-3; at 13B that is 26 GB of bf16 per GPU)."""
        import torch
        from transformers import AutoModelForCausalLM

        reference = AutoModelForCausalLM.from_pretrained(
            init_model, dtype=torch.bfloat16 if bf16 and on_gpu else torch.float32)
        reference.requires_grad_(False)
        return reference.to("cuda" if on_gpu else "cpu").eval()

    def run(self) -> None:
        import functools

        import ray.train

        from glore_ray.training.loop import train_steps

        batches = row_batches(ray.train.get_dataset_shard("train"), self.objective, self.tokenizer, self.cfg,
                              on_skip=self._count_skipped)
        loss = functools.partial(self.objective.loss, reference=self.reference)
        train_steps(self.strategy.model, batches, self.cfg, loss, self.strategy.step, self._on_log,
                    start_step=self.start_step, on_step=self._on_step)
        self.summary["skipped_long"] = self._total_over_ranks(self.summary["skipped_long"])
        self._save(self.cfg.steps, export=True)

    def _total_over_ranks(self, count: int) -> int:
        import torch
        import torch.distributed as dist

        if not dist.is_initialized():
            return count
        total = torch.tensor([count], device=next(self.strategy.bare.parameters()).device)
        dist.all_reduce(total)
        return int(total.item())

    def _count_skipped(self) -> None:
        self.summary["skipped_long"] += 1

    def _on_log(self, step_log) -> None:
        self.summary.setdefault("first_loss", step_log.loss)
        self.summary.update(loss=step_log.loss, lr=step_log.lr, tokens_per_s=step_log.tokens_per_s)
        if self.rank != 0:
            return
        self.metrics.record("train_steps", step_log.step - self.logged_step)
        self.metrics.record("train_loss", step_log.loss)
        self.metrics.record("train_tokens_per_second", step_log.tokens_per_s)
        self.logged_step = step_log.step
        if self.progress is not None:
            self.progress.add.remote({}, {"step": step_log.step, "loss": step_log.loss,
                                          "tokens_per_s": step_log.tokens_per_s})
        # Not print(): Ray Train's patched print logs the line and also tees it to stdout, so every
        # line would reach the driver twice.
        sys.stdout.write(f"{self.objective.name} step {step_log.step}/{self.cfg.steps}  loss {step_log.loss:.4f}  "
                         f"lr {step_log.lr:.2e}  {step_log.tokens_per_s:,.0f} tok/s/worker\n")
        sys.stdout.flush()

    def _on_step(self, step: int) -> None:
        if step % self.cfg.checkpoint_every == 0 and step < self.cfg.steps:
            self._save(step, export=False)

    def _save(self, step: int, export: bool) -> None:
        import ray.train

        with tempfile.TemporaryDirectory() as tmp:
            self.strategy.save(Path(tmp))
            if export:
                self.strategy.export(Path(tmp) / EXPORT, self.tokenizer)
            if self.rank == 0:
                (Path(tmp) / META).write_text(json.dumps(
                    {"step": step, "objective": self.objective.name, **self.summary}))
            has_files = self.rank == 0 or self.strategy.writes_checkpoint
            ray.train.report({"step": step, **self.summary},
                             checkpoint=ray.train.Checkpoint.from_directory(tmp) if has_files else None)


def train_worker(config: dict) -> None:
    """The per-worker entry point Ray Train calls."""
    Trainer(config["objective"], config["cfg"], config["init_model"], config["metrics"], config["progress"]).run()
