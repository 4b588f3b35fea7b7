"""Token examples and their losses, for both heads GLoRe trains.

- Causal LM (policy, refiners): prompt + target + EOS, the loss on the target tokens only.
- Step reward (ORM, SORM, PRM): a binary classifier read at the last token of every step. Rows follow
  TRL's PRM layout (`prompt`, `completions` = the steps, `labels` = one per step); each step is
  followed by a newline, and that newline token carries the step's label. The model is a
  `LlamaForTokenClassification` with one logit per token, a standard Hugging Face architecture:
  `AutoModelForTokenClassification` loads it with no project code, and one forward pass scores
  every step of a solution.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

IGNORE = -100
STEP_END = "\n"


class ExampleTooLong(ValueError):
    """A prompt + target longer than the configured max length."""


@dataclass
class EncodedExample:
    input_ids: list[int]
    labels: list[int]
    """IGNORE where nothing is learnt: the prompt (causal LM), every token but a step's last (step reward)."""


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


def encode_step_example(tokenizer, prompt: str, steps: Sequence[str], labels: Sequence[bool | int],
                        max_length: int, name: str = "") -> EncodedExample:
    """Prompt (with BOS), then each step and its newline; the step's label (1 or 0) sits on the newline."""
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
    return EncodedExample(input_ids, targets)


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


def step_reward_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of the per-token logit (B, T) or (B, T, 1) at labelled positions."""
    logits = logits.reshape(labels.shape).float()
    mask = labels != IGNORE
    return F.binary_cross_entropy_with_logits(logits[mask], labels[mask].float())


def step_scores(logits: torch.Tensor, labels: torch.Tensor) -> list[list[float]]:
    """P(step is good) for every labelled position of each row, in step order."""
    probs = torch.sigmoid(logits.reshape(labels.shape).float())
    return [probs[row][labels[row] != IGNORE].tolist() for row in range(labels.shape[0])]
