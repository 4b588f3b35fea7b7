"""Step rewards for the ORM and the SORM: a binary classifier read at the last token of every step.

Data follows TRL's PRM layout: `prompt`, `completions` (the solution's steps) and `labels` (one per
step). Each step is followed by a newline, and that newline token carries the step's label;
every other position is ignored.

The model is a `LlamaForTokenClassification` with one logit per token, started from the policy's
weights. It is a standard Hugging Face architecture, so `AutoModelForTokenClassification` loads the
saved folder with no project code, and one forward pass scores every step of a solution.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from glore_ray.sft import IGNORE, ExampleTooLong

STEP_END = "\n"


@dataclass
class EncodedStepExample:
    input_ids: list[int]
    labels: list[int]
    """1 or 0 on the last token of each step, IGNORE elsewhere."""


def encode_step_example(tokenizer, prompt: str, steps: Sequence[str], labels: Sequence[bool | int],
                        max_length: int, name: str = "") -> EncodedStepExample:
    """Prompt (with BOS), then each step and its newline; the label sits on the newline token."""
    if len(steps) == 0:
        raise ValueError(f"row {name}: no steps in 'completions'")
    if len(labels) != len(steps):
        raise ValueError(f"row {name}: {len(labels)} labels for {len(steps)} steps in 'completions'")
    if any(not str(step).strip() for step in steps):
        raise ValueError(f"row {name}: an empty step in 'completions'")
    input_ids = list(tokenizer(prompt)["input_ids"])
    targets = [IGNORE] * len(input_ids)
    for step, label in zip(steps, labels):
        ids = tokenizer(str(step).strip() + STEP_END, add_special_tokens=False)["input_ids"]
        input_ids += ids
        targets += [IGNORE] * (len(ids) - 1) + [int(bool(label))]
    if len(input_ids) > max_length:
        raise ExampleTooLong(f"row {name}: {len(input_ids)} tokens > max_length {max_length}")
    return EncodedStepExample(input_ids, targets)


def step_reward_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of the per-token logit (B, T) or (B, T, 1) at labelled positions."""
    logits = logits.reshape(labels.shape).float()
    mask = labels != IGNORE
    return F.binary_cross_entropy_with_logits(logits[mask], labels[mask].float())


def step_scores(logits: torch.Tensor, labels: torch.Tensor) -> list[list[float]]:
    """P(step is good) for every labelled position of each row, in step order."""
    probs = torch.sigmoid(logits.reshape(labels.shape).float())
    return [probs[row][labels[row] != IGNORE].tolist() for row in range(labels.shape[0])]


def step_reward_batch_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return step_reward_loss(logits, batch["labels"])
