"""The training loop every objective runs: in one process (tests, `glore sft`) and inside Ray
Train workers, under plain torch, DDP or DeepSpeed. The caller supplies the batches, the loss and
the update (a strategy's `step`: backward + optimizer step); the loop owns the schedule and the
logging.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from glore_ray.config import TrainConfig

LossFn = Callable[[torch.nn.Module, dict[str, torch.Tensor]], torch.Tensor]


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to lr * min_lr_ratio."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


@dataclass
class StepLog:
    step: int
    loss: float
    lr: float
    tokens_per_s: float


def train_steps(model: torch.nn.Module, batches: Iterator[dict[str, torch.Tensor]], cfg: TrainConfig,
                loss_fn: LossFn, update: Callable[[torch.Tensor, float], None],
                on_log: Callable[[StepLog], None] = lambda log: None, start_step: int = 0,
                on_step: Callable[[int], None] = lambda step: None) -> None:
    """Run steps `start_step .. cfg.steps`; `on_step(done)` after each (checkpointing hooks in)."""
    model.train()
    device = next(model.parameters()).device
    tokens, losses, t0 = 0, [], time.perf_counter()
    for step in range(start_step, cfg.steps):
        batch = {k: v.to(device, non_blocking=True) for k, v in next(batches).items()}
        loss = loss_fn(model, batch)
        update(loss, lr_at(step, cfg))
        tokens += int(batch["attention_mask"].sum())
        losses.append(loss.item())
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            elapsed = time.perf_counter() - t0
            on_log(StepLog(step + 1, sum(losses) / len(losses), lr_at(step, cfg), tokens / elapsed))
            tokens, losses, t0 = 0, [], time.perf_counter()
        on_step(step + 1)
    model.eval()
