"""Supervised fine-tuning examples and loss: causal LM on the target tokens only (the prompt is
masked out). The loop that runs them is `train_loop.train_steps`.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F


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


def causal_lm_batch_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return causal_lm_loss(logits, batch["labels"])
