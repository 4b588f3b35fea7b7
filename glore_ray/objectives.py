"""The five training objectives of GLoRe and their rows, turned into token examples.

| objective | row fields | loss |
|---|---|---|
| policy | question, solution | SFT on the solution |
| global-refiner | question, draft, target | SFT on the target |
| local-refiner | question, draft_steps, bad_step, target | SFT on the target (the draft from bad_step on) |
| orm, sorm | prompt (the question), completions (steps), labels (one per step) | step reward |

The step-reward rows are TRL's PRM layout, so the same files work with other tools.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from glore_ray.prompts import global_refine_prompt, local_refine_prompt, solve_prompt

OBJECTIVES = ("policy", "orm", "sorm", "global-refiner", "local-refiner")
STEP_REWARD = ("orm", "sorm")

FIELDS = {
    "policy": ("question", "solution"),
    "global-refiner": ("question", "draft", "target"),
    "local-refiner": ("question", "draft_steps", "bad_step", "target"),
    "orm": ("prompt", "completions", "labels"),
    "sorm": ("prompt", "completions", "labels"),
}


def encode_row(objective: str, tokenizer, row: Mapping[str, Any], max_length: int):
    """One training example (EncodedExample or EncodedStepExample) from one row; a bad row raises
    ValueError naming the row and field."""
    # Imported here: the CLI lists OBJECTIVES without loading torch.
    from glore_ray.sft import encode_example
    from glore_ray.step_reward import encode_step_example

    name = str(row.get("id", "?"))
    missing = [f for f in FIELDS[objective] if f not in row or row[f] is None]
    if missing:
        raise ValueError(f"row {name}: missing field {missing[0]!r} for objective {objective}")
    if objective in STEP_REWARD:
        return encode_step_example(tokenizer, solve_prompt(row["prompt"]), list(row["completions"]),
                                   list(row["labels"]), max_length, name)
    if objective == "policy":
        prompt, target = solve_prompt(row["question"]), row["solution"]
    elif objective == "global-refiner":
        prompt, target = global_refine_prompt(row["question"], row["draft"]), row["target"]
    else:
        try:
            prompt = local_refine_prompt(row["question"], [str(s) for s in row["draft_steps"]], int(row["bad_step"]))
        except ValueError as e:
            raise ValueError(f"row {name}: field 'bad_step': {e}") from None
        target = row["target"]
    return encode_example(tokenizer, prompt, str(target), max_length, name)
