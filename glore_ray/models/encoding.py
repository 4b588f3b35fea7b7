"""Solutions as token examples, one encoding for training and for reading them back.

- Causal LM (policy, refiners): prompt + target + EOS, the loss on the target tokens only.
- Step reward (ORM, SORM, PRM): a binary classifier read at the last token of every step. Rows follow
  TRL's PRM layout (`prompt`, `completions` = the steps, `labels` = one per step); each step is
  followed by a newline, and that newline token carries the step's label. The model is a
  `LlamaForTokenClassification` with one logit per token, a standard Hugging Face architecture:
  `AutoModelForTokenClassification` loads it with no project code, and one forward pass scores
  every step of a solution.

The trainers (`training`) encode with it and the scorers (`models.scorers`) read with it, so a
reward model is read exactly as it was trained.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

IGNORE = -100
STEP_END = "\n"


class ExampleTooLong(ValueError):
    """A prompt + target longer than the configured max length."""


@dataclass
class EncodedExample:
    input_ids: list[int]
    labels: list[int]
    """IGNORE where nothing is learnt: the prompt (causal LM), every token but a step's last (step reward)."""
    weights: list[float] | None = None
    """Step reward: each labelled position's loss weight (balancing by step index; None: all 1)."""
    prompt_len: int = 0
    """Tokens of the prompt: the solution starts here (the implicit PRM sums log-ratios from it)."""


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
                        max_length: int, name: str = "", weights: Sequence[float] | None = None) -> EncodedExample:
    """Prompt (with BOS), then each step and its newline; the step's label (1 or 0) sits on the
    newline, with its loss weight when `weights` are given (one per step)."""
    if len(steps) == 0:
        raise ValueError(f"row {name}: no steps in 'completions'")
    if len(labels) != len(steps):
        raise ValueError(f"row {name}: {len(labels)} labels for {len(steps)} steps in 'completions'")
    if weights is not None and (len(weights) != len(steps) or any(not w >= 0 for w in weights)):
        raise ValueError(f"row {name}: field 'weights' needs one weight >= 0 per step, got {list(weights)}")
    if any(not str(step).strip() for step in steps):
        raise ValueError(f"row {name}: an empty step in 'completions'")
    input_ids = list(tokenizer(prompt)["input_ids"])
    prompt_len = len(input_ids)
    targets = [IGNORE] * len(input_ids)
    for step, label in zip(steps, labels):
        ids = tokenizer(str(step).strip() + STEP_END, add_special_tokens=False)["input_ids"]
        input_ids += ids
        targets += [IGNORE] * (len(ids) - 1) + [int(bool(label))]
    if len(input_ids) > max_length:
        raise ExampleTooLong(f"row {name}: {len(input_ids)} tokens > max_length {max_length}")
    return EncodedExample(input_ids, targets, None if weights is None else [float(w) for w in weights], prompt_len)


def collate(examples: Sequence[EncodedExample], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest example of the batch; `weights` (1 where a row has none) and
    `solution_start` only when a row carries them."""
    width = max(len(e.input_ids) for e in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    weights = torch.ones((len(examples), width)) if any(e.weights is not None for e in examples) else None
    for row, e in enumerate(examples):
        n = len(e.input_ids)
        input_ids[row, :n] = torch.tensor(e.input_ids)
        labels[row, :n] = torch.tensor(e.labels)
        mask[row, :n] = 1
        if weights is not None and e.weights is not None:
            weights[row, :n][torch.tensor(e.labels) != IGNORE] = torch.tensor(e.weights)
    batch = {"input_ids": input_ids, "attention_mask": mask, "labels": labels}
    if weights is not None:
        batch["weights"] = weights
    if any(e.prompt_len for e in examples):
        batch["solution_start"] = torch.tensor([e.prompt_len for e in examples])
    return batch


def step_scores(logits: torch.Tensor, labels: torch.Tensor) -> list[list[float]]:
    """P(step is good) for every labelled position of each row, in step order (in float64: a
    confident model's float32 probabilities saturate at 1.0 and tie)."""
    probs = torch.sigmoid(logits.reshape(labels.shape).double())
    return [probs[row][labels[row] != IGNORE].tolist() for row in range(labels.shape[0])]


def token_logprobs(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """(B, T) log-probability of each token given the ones before it (0 at position 0): token t is
    read from the logits at t - 1."""
    out = torch.zeros(input_ids.shape, dtype=torch.float32, device=logits.device)
    out[:, 1:] = torch.log_softmax(logits[:, :-1].float(), -1).gather(2, input_ids[:, 1:, None])[..., 0]
    return out


def step_mean_logprobs(logprobs: Sequence[float], example: EncodedExample) -> list[float]:
    """The mean log-probability of the solution's tokens up to the end of every step: `logprobs[t]`
    is token t's given the ones before it, `example` the solution as `encode_step_example` reads it
    (a step ends at its labelled newline; the prompt's tokens are not counted)."""
    total, out = 0.0, []
    for n, t in enumerate(range(example.prompt_len, len(example.input_ids)), start=1):
        total += logprobs[t]
        if example.labels[t] != IGNORE:
            out.append(total / n)
    return out


def implicit_values(logits: torch.Tensor, reference_logits: torch.Tensor, batch: dict, beta: float) -> torch.Tensor:
    """(B, T) implicit PRM value at every position (arXiv 2412.01981): beta times the sum of
    log(pi / pi_ref) over the solution's tokens so far. The prompt's tokens are left out (a term
    shared by a question's solutions, and not the model's to judge), as is padding."""
    ratio = token_logprobs(logits, batch["input_ids"]) - token_logprobs(reference_logits, batch["input_ids"])
    positions = torch.arange(ratio.shape[1], device=ratio.device)[None, :]
    solution = (positions >= batch["solution_start"][:, None].to(ratio.device)) & batch["attention_mask"].bool()
    return beta * (ratio * solution).cumsum(1)
