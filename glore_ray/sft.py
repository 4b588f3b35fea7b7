"""Supervised fine-tuning as plain torch: causal-LM loss on the target tokens only.

The same functions run in a single process (tests, `glore sft`) and inside Ray Train workers:
the caller supplies the batches and the logging callback, the loop owns nothing else.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from glore_ray.config import TrainConfig

IGNORE = -100


class ExampleTooLong(ValueError):
    """A prompt + target longer than the configured max length."""


@dataclass
class EncodedExample:
    input_ids: list[int]
    labels: list[int]
    """IGNORE on prompt positions: the model is not trained to predict its own prompt."""


def encode_example(tokenizer, prompt: str, target: str, max_length: int, name: str = "") -> EncodedExample:
    """Prompt (with BOS) + target + EOS; labels only on the target and EOS."""
    if not target.strip():
        raise ValueError(f"row {name}: empty target")
    prompt_ids = tokenizer(prompt)["input_ids"]
    target_ids = tokenizer(target, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    ids = prompt_ids + target_ids
    if len(ids) > max_length:
        raise ExampleTooLong(f"row {name}: {len(ids)} tokens > max_length {max_length}")
    return EncodedExample(ids, [IGNORE] * len(prompt_ids) + target_ids)


def collate(examples: Sequence[EncodedExample], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest example of the batch."""
    width = max(len(e.input_ids) for e in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, e in enumerate(examples):
        n = len(e.input_ids)
        input_ids[row, :n] = torch.tensor(e.input_ids)
        labels[row, :n] = torch.tensor(e.labels)
        mask[row, :n] = 1
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over positions whose label is not IGNORE."""
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=IGNORE)


def shuffled_batches(examples: Sequence[EncodedExample], batch_size: int, pad_id: int,
                     seed: int) -> Iterator[dict[str, torch.Tensor]]:
    """Endless batches, reshuffled every epoch (single-process training)."""
    if len(examples) < batch_size:
        raise ValueError(f"{len(examples)} training examples cannot fill one batch of {batch_size}")
    rng = random.Random(seed)
    order = list(range(len(examples)))
    while True:
        rng.shuffle(order)
        for start in range(0, len(order) - batch_size + 1, batch_size):
            yield collate([examples[i] for i in order[start:start + batch_size]], pad_id)


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


def train_sft(model: torch.nn.Module, batches: Iterator[dict[str, torch.Tensor]], cfg: TrainConfig,
              on_log: Callable[[StepLog], None] = lambda log: None, start_step: int = 0,
              optimizer: torch.optim.Optimizer | None = None) -> torch.optim.Optimizer:
    """Run steps `start_step .. cfg.steps` and return the optimizer (its state is the checkpoint's)."""
    if optimizer is None:
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                                      betas=(0.9, 0.95))
    model.train()
    device = next(model.parameters()).device
    tokens, losses, t0 = 0, [], time.perf_counter()
    for step in range(start_step, cfg.steps):
        batch = {k: v.to(device, non_blocking=True) for k, v in next(batches).items()}
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, cfg)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        loss = causal_lm_loss(logits, batch["labels"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        tokens += int(batch["attention_mask"].sum())
        losses.append(loss.item())
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            elapsed = time.perf_counter() - t0
            on_log(StepLog(step + 1, sum(losses) / len(losses), lr_at(step, cfg), tokens / elapsed))
            tokens, losses, t0 = 0, [], time.perf_counter()
    model.eval()
    return optimizer
