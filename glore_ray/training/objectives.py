"""The five training objectives of GLoRe: the rows each reads, the head it trains and its loss.

| objective | row fields | head, loss |
|---|---|---|
| policy | question, solution | causal LM, SFT on the solution |
| global_refiner | question, draft, target | causal LM, SFT on the target |
| local_refiner | question, draft_steps, bad_step, target | causal LM, SFT on the target (the draft from bad_step on) |
| orm, sorm | prompt (the question), completions (steps), labels (one per step), optional weights | step reward |

An objective's name is also its config section and its pipeline stage. The step-reward rows are
TRL's PRM layout, so the same files work with other tools; `weights` (one per step) balance the
labels per step index.

A step reward has one of two heads (`reward_model.head`, the same for the ORM, SORM and PRM):
- `value`: a new scalar head on the policy's body, its logit at each step's newline, BCE;
- `implicit`: the implicit PRM (arXiv 2412.01981). The model is a causal LM started from the
  policy, which stays as the frozen reference; a step's value is beta * log(pi / pi_ref) summed
  over the solution's tokens up to its newline, trained with BCE on the labels: the ORM on its
  outcome label at the answer line only (the paper's recipe: the partial sums are then the step
  values), the SORM and PRM on every step's label. A slip is a low-probability token, which a
  log-ratio reads directly; a new value head must learn the arithmetic to see it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from glore_ray.core.prompts import global_refine_prompt, local_refine_prompt, solve_prompt


def _solve(row: Mapping[str, Any]) -> tuple[str, str]:
    return solve_prompt(row["question"]), row["solution"]


def _global_refine(row: Mapping[str, Any]) -> tuple[str, str]:
    return global_refine_prompt(row["question"], row["draft"]), row["target"]


def _local_refine(row: Mapping[str, Any]) -> tuple[str, str]:
    try:
        prompt = local_refine_prompt(row["question"], [str(s) for s in row["draft_steps"]], int(row["bad_step"]))
    except ValueError as e:
        raise ValueError(f"row {row.get('id', '?')}: field 'bad_step': {e}") from None
    return prompt, row["target"]


@dataclass(frozen=True)
class Objective:
    name: str
    fields: tuple[str, ...]
    prompt_and_target: Callable[[Mapping[str, Any]], tuple[str, str]] | None = None
    """The causal-LM example of a row; None for the step-reward head."""
    implicit_beta: float | None = None
    """A step reward read as an implicit PRM with this beta (`with_head`); None: a value head."""

    @property
    def step_reward(self) -> bool:
        return self.prompt_and_target is None

    @property
    def implicit(self) -> bool:
        return self.implicit_beta is not None

    @property
    def needs_reference(self) -> bool:
        """The loss reads a frozen copy of the initial model (the implicit PRM's pi_ref)."""
        return self.implicit

    @property
    def auto_class(self) -> str:
        """The transformers Auto class that loads (and exports) the objective's model."""
        return "AutoModelForTokenClassification" if self.step_reward and not self.implicit else "AutoModelForCausalLM"

    def with_head(self, head: str, beta: float) -> Objective:
        """This step-reward objective with the reward-model head `head` (`value` or `implicit`)."""
        if head not in ("value", "implicit"):
            raise ValueError(f"unknown reward-model head {head!r} (value or implicit)")
        if not self.step_reward:
            return self
        return dataclasses.replace(self, implicit_beta=beta if head == "implicit" else None)

    def load_model(self, folder: str):
        """The model to train, from a Hugging Face folder (a step-reward head is new, from the seed)."""
        import transformers

        return getattr(transformers, self.auto_class).from_pretrained(
            folder, **({"num_labels": 1} if self.auto_class == "AutoModelForTokenClassification" else {}))

    def encode(self, tokenizer, row: Mapping[str, Any], max_length: int):
        """One EncodedExample from one row; a bad row raises ValueError naming the row and field."""
        from glore_ray.models.encoding import encode_example, encode_step_example

        name = str(row.get("id", "?"))
        missing = [f for f in self.fields if f not in row or row[f] is None]
        if missing:
            raise ValueError(f"row {name}: missing field {missing[0]!r} for objective {self.name}")
        if self.step_reward:
            weights = row.get("weights")
            return encode_step_example(tokenizer, solve_prompt(row["prompt"]), list(row["completions"]),
                                       list(row["labels"]), max_length, name,
                                       None if weights is None else list(weights))
        prompt, target = self.prompt_and_target(row)
        return encode_example(tokenizer, prompt, str(target), max_length, name)

    def loss(self, model, batch: dict, reference=None):
        """The batch's loss; `reference` is the frozen initial model when `needs_reference`."""
        import torch

        from glore_ray.models.encoding import implicit_values
        from glore_ray.training.losses import causal_lm_loss, final_labels_only, step_reward_loss

        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        if not self.step_reward:
            return causal_lm_loss(logits, batch["labels"])
        if not self.implicit:
            return step_reward_loss(logits, batch["labels"], batch.get("weights"))
        if reference is None:
            raise ValueError(f"objective {self.name}: the implicit PRM's loss needs the reference model")
        with torch.no_grad():
            reference_logits = reference(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        values = implicit_values(logits, reference_logits, batch, self.implicit_beta)
        labels = final_labels_only(batch["labels"]) if self.name == "orm" else batch["labels"]
        return step_reward_loss(values, labels, batch.get("weights"))


_STEP_ROWS = ("prompt", "completions", "labels")
OBJECTIVES: dict[str, Objective] = {o.name: o for o in (
    Objective("policy", ("question", "solution"), _solve),
    Objective("orm", _STEP_ROWS),
    Objective("sorm", _STEP_ROWS),
    Objective("global_refiner", ("question", "draft", "target"), _global_refine),
    Objective("local_refiner", ("question", "draft_steps", "bad_step", "target"), _local_refine),
)}


def objective(name: str | Objective) -> Objective:
    """The objective called `name` (an Objective, such as one `with_head`, is returned as it is)."""
    if isinstance(name, Objective):
        return name
    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective {name!r}; valid: {', '.join(OBJECTIVES)}")
    return OBJECTIVES[name]


def encode_row(name: str, tokenizer, row: Mapping[str, Any], max_length: int):
    """One training example of objective `name` from one row."""
    return objective(name).encode(tokenizer, row, max_length)
