"""One Ray Train runner for all five objectives, under DDP or DeepSpeed ZeRO-2/3.

The driver side (`fit`) builds the TorchTrainer from the config; each worker (`train_worker`)
streams its shard of the Ray Dataset, runs `train_loop.train_steps`, checkpoints every N steps
through `ray.train.report`, and finally exports a Hugging Face folder inside the last checkpoint,
which the driver copies to `out`. A worker that dies is restarted from the last checkpoint
(FailureConfig) and the run still ends after `steps` optimizer steps.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from glore_ray.config import TrainConfig
from glore_ray.metrics import StageMetrics
from glore_ray.objectives import OBJECTIVES, STEP_REWARD, encode_row

META = "meta.json"
EXPORT = "hf"
DS_TAG = "state"  # DeepSpeed also writes a file named "latest": the tag must differ


def read_rows(path: str):
    """A Ray Dataset of training rows from Parquet (a file or a directory) or JSONL, local or s3/gs."""
    import ray.data

    return ray.data.read_json(path) if path.endswith((".jsonl", ".json")) else ray.data.read_parquet(path)


def count_rows(path: str) -> int:
    """Rows in a training data set (0 for an empty Parquet directory)."""
    return read_rows(path).count()


def export_untrained(objective: str, init_model: str, out: str) -> None:
    """The model `fit` would start from, exported as the result: the initial causal LM, or for a
    reward model its body with a new (seeded) value head."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForTokenClassification, AutoTokenizer

    torch.manual_seed(0)
    if objective in STEP_REWARD:
        model = AutoModelForTokenClassification.from_pretrained(init_model, num_labels=1)
    else:
        model = AutoModelForCausalLM.from_pretrained(init_model)
    model.save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(init_model).save_pretrained(out)


def fit(objective: str, cfg: TrainConfig, data: str, init_model: str, out: str, run_name: str,
        log: Callable[[str], None] = print, metrics: StageMetrics | None = None) -> dict:
    """Train `objective` from the Hugging Face folder `init_model` on `data`; write the result to
    `out` and return the run's summary (steps, first and last logged loss, resumed_from). Rank 0
    records loss, steps and throughput as `metrics` (default: stage = the objective, run = `run_name`)."""
    import ray.train
    from ray.train.torch import TorchTrainer

    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}; valid: {', '.join(OBJECTIVES)}")
    resources = {"CPU": cfg.cpus_per_worker} | ({"GPU": cfg.gpus_per_worker} if cfg.gpus_per_worker else {})
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={"objective": objective, "cfg": dataclasses.asdict(cfg),
                           "metrics": dataclasses.asdict(metrics or StageMetrics(objective, run_name)),
                           "init_model": os.path.abspath(init_model)},
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
    log(f"{objective}: {meta['step']} steps, final loss {meta['loss']:.4f} -> {out}")
    return meta


def _plain(value: Any) -> Any:
    """Ray Data's numpy batches hold list columns as object arrays of arrays: back to Python."""
    return value.tolist() if hasattr(value, "tolist") else value


def epoch_seed(seed: int, epoch: int) -> int:
    """The shuffle seed of one epoch: every epoch a new order, the same one on a re-run."""
    return seed * 1_000_003 + epoch


def row_batches(shard, objective: str, tokenizer, cfg: TrainConfig, skipped: list[int]) -> Iterator[dict]:
    """Endless collated batches from a Ray Data shard, epoch after epoch, each epoch in a new order.

    Rows arrive in file order (a question's rollouts together), so every epoch is shuffled with a
    seed from `cfg.seed` and the epoch: within a `shuffle_buffer_rows` window while streaming, and
    wholly when a shard of at most `replay_rows` rows is replayed from memory after its first
    epoch. Over-long rows fail the run (naming the row) unless `skip_long`, which counts them in
    `skipped[0]`."""
    from glore_ray.sft import ExampleTooLong, collate

    kept: list | None = [] if cfg.replay_rows else None
    epoch = 0
    while True:
        if epoch and kept:
            order = random.Random(epoch_seed(cfg.seed, epoch)).sample(kept, len(kept))
            for start in range(0, len(order), cfg.batch_size):
                yield collate(order[start:start + cfg.batch_size], tokenizer.pad_token_id)
            epoch += 1
            continue
        for batch in shard.iter_batches(batch_size=cfg.batch_size, batch_format="numpy",
                                        local_shuffle_buffer_size=cfg.shuffle_buffer_rows or None,
                                        local_shuffle_seed=epoch_seed(cfg.seed, epoch)):
            examples = []
            n_rows = len(next(iter(batch.values())))
            for i in range(n_rows):
                row = {k: _plain(v[i]) for k, v in batch.items()}
                try:
                    examples.append(encode_row(objective, tokenizer, row, cfg.max_length))
                except ExampleTooLong:
                    if not cfg.skip_long:
                        raise
                    skipped[0] += 1
            if kept is not None:
                kept.extend(examples)
                if len(kept) > cfg.replay_rows:
                    kept = None
            if examples:
                yield collate(examples, tokenizer.pad_token_id)
        epoch += 1


def deepspeed_config(cfg: TrainConfig, bf16: bool) -> dict:
    stage = {"zero2": 2, "zero3": 3}[cfg.strategy]
    zero: dict[str, Any] = {"stage": stage}
    if cfg.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if stage == 3:
        # The exported folder needs whole 16-bit weights, gathered from every rank at save time.
        zero["stage3_gather_16bit_weights_on_model_save"] = True
        if cfg.offload_params:
            zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    return {
        "train_micro_batch_size_per_gpu": cfg.batch_size,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": cfg.grad_clip,
        "zero_optimization": zero,
        "bf16": {"enabled": bf16},
        "zero_allow_untested_optimizer": True,  # torch AdamW: no fused-op build on CPU
        "steps_per_print": 10**9,
    }


class DeepSpeedUpdate:
    def __init__(self, engine, optimizer):
        self.engine, self.optimizer = engine, optimizer

    def __call__(self, loss, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.engine.backward(loss)
        self.engine.step()


def train_worker(config: dict) -> None:
    """The per-worker loop (runs inside a Ray Train worker)."""
    import ray.train
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForTokenClassification, AutoTokenizer

    from glore_ray.sft import causal_lm_batch_loss
    from glore_ray.step_reward import step_reward_batch_loss
    from glore_ray.train_loop import TorchUpdate, train_steps

    objective, cfg, init_model = config["objective"], TrainConfig(**config["cfg"]), config["init_model"]
    stage_metrics = StageMetrics(**config["metrics"])
    rank = ray.train.get_context().get_world_rank()
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
    step_reward = objective in STEP_REWARD
    model_cls = AutoModelForTokenClassification if step_reward else AutoModelForCausalLM
    model = model_cls.from_pretrained(init_model, **({"num_labels": 1} if step_reward else {}))
    tokenizer = AutoTokenizer.from_pretrained(init_model)
    if cfg.activation_checkpointing:
        model.gradient_checkpointing_enable()
    loss_fn = step_reward_batch_loss if step_reward else causal_lm_batch_loss

    if ds_config is None:
        model = ray.train.torch.prepare_model(model)
        update = TorchUpdate(model, cfg)
        engine = None
    else:
        import deepspeed

        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.95))
        engine, optimizer, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config)
        model, update = engine, DeepSpeedUpdate(engine, optimizer)
    # DDP and DeepSpeed wrap the model; prepare_model leaves a single worker's model bare.
    bare = getattr(model, "module", model)

    start_step = 0
    last = {"loss": float("nan"), "resumed_from": None}
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            start_step = last["resumed_from"] = json.loads((Path(d) / META).read_text())["step"]
            if engine is None:
                state = torch.load(Path(d) / "state.pt", map_location="cpu", weights_only=True)
                bare.load_state_dict(state["model"])
                update.optimizer.load_state_dict(state["optimizer"])
            else:
                engine.load_checkpoint(d, tag=DS_TAG)

    skipped = [0]
    logged_step = [start_step]

    def on_log(log) -> None:
        last.setdefault("first_loss", log.loss)
        last.update(loss=log.loss, lr=log.lr, tokens_per_s=log.tokens_per_s)
        if rank == 0:
            stage_metrics.record("train_steps", log.step - logged_step[0])
            stage_metrics.record("train_loss", log.loss)
            stage_metrics.record("train_tokens_per_second", log.tokens_per_s)
            logged_step[0] = log.step
            # Not print(): Ray Train's patched print logs the line and also tees it to stdout, so
            # every line would reach the driver twice.
            sys.stdout.write(f"{objective} step {log.step}/{cfg.steps}  loss {log.loss:.4f}  lr {log.lr:.2e}  "
                             f"{log.tokens_per_s:,.0f} tok/s/worker\n")
            sys.stdout.flush()

    def save(step: int, export: bool) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            if engine is None:
                if rank == 0:
                    torch.save({"model": bare.state_dict(), "optimizer": update.optimizer.state_dict()},
                               Path(tmp) / "state.pt")
            else:
                engine.save_checkpoint(tmp, tag=DS_TAG)
            if export:
                _export(bare, engine, tokenizer, Path(tmp) / EXPORT, rank)
            if rank == 0:
                (Path(tmp) / META).write_text(json.dumps({"step": step, "objective": objective, **last}))
            metrics = {"step": step, "skipped_long": skipped[0], **last}
            has_files = rank == 0 or engine is not None
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp) if has_files else None)

    def on_step(step: int) -> None:
        if step % cfg.checkpoint_every == 0 and step < cfg.steps:
            save(step, export=False)

    batches = row_batches(ray.train.get_dataset_shard("train"), objective, tokenizer, cfg, skipped)
    train_steps(model, batches, cfg, loss_fn, update, on_log, start_step=start_step, on_step=on_step)
    save(cfg.steps, export=True)


def _export(bare, engine, tokenizer, out: Path, rank: int) -> None:
    """Hugging Face folder (safetensors) of the trained model; under ZeRO-3 the 16-bit weights are
    gathered from all ranks (every rank must call this)."""
    import torch

    if engine is not None and engine.zero_optimization_stage() == 3:
        with tempfile.TemporaryDirectory() as tmp:
            engine.save_16bit_model(tmp, "consolidated.bin")  # collective: all ranks gather
            if rank == 0:
                state = torch.load(Path(tmp) / "consolidated.bin", map_location="cpu", weights_only=True)
                engine.module.save_pretrained(out, state_dict=state, safe_serialization=True)
    elif rank == 0:
        bare.save_pretrained(out, safe_serialization=True)
    if rank == 0:
        tokenizer.save_pretrained(out)
