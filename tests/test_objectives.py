"""The five objectives' rows: prompt formats, step labels on each step's last token, bad rows named."""

from __future__ import annotations

import math

import pytest
import torch

from glore_ray.config import GloreConfig
from glore_ray.core.organism import generate
from glore_ray.core.prompts import local_refine_prompt, solve_prompt
from glore_ray.models.encoding import IGNORE, collate, encode_step_example, implicit_values, step_scores
from glore_ray.models.tiny import load_model_folder
from glore_ray.training.losses import final_labels_only, step_reward_loss
from glore_ray.training.objectives import OBJECTIVES, encode_row

P = next(iter(generate(GloreConfig().data.organism, "train", 1)))
ROWS = {
    "policy": {"id": "p", "question": P.question, "solution": P.solution()},
    "global_refiner": {"id": "g", "question": P.question, "draft": "The bags hold 1 + 1 = 3.\n#### 3",
                       "target": P.solution()},
    "local_refiner": {"id": "l", "question": P.question, "draft_steps": list(P.steps), "bad_step": 1,
                      "target": "\n".join(P.steps[1:]) + f"\n#### {P.answer}"},
    "orm": {"id": "o", "prompt": P.question, "completions": list(P.steps), "labels": [False] * len(P.steps)},
    "sorm": {"id": "s", "prompt": P.question, "completions": list(P.steps),
             "labels": [True] + [False] * (len(P.steps) - 1)},
}


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return load_model_folder(tiny_model_dir)[1]


def test_the_local_prompt_marks_the_first_wrong_step() -> None:
    prompt = local_refine_prompt("Q?", ["a = 1", "b = 2", "c = 3"], 1)
    assert "a = 1\n[BAD] b = 2\nc = 3\n" in prompt
    with pytest.raises(ValueError, match="outside the draft's 3 steps"):
        local_refine_prompt("Q?", ["a", "b", "c"], 3)


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_every_objective_encodes_its_row(objective: str, tokenizer) -> None:
    ex = encode_row(objective, tokenizer, ROWS[objective], 400)
    labelled = [label for label in ex.labels if label != IGNORE]
    assert ex.input_ids[0] == tokenizer.bos_token_id and len(ex.labels) == len(ex.input_ids)
    if objective in ("orm", "sorm"):
        assert labelled == [int(v) for v in ROWS[objective]["labels"]]
    else:
        assert labelled[-1] == tokenizer.eos_token_id
        assert tokenizer.decode(labelled[:-1]) == ROWS[objective].get("solution", ROWS[objective].get("target"))


def test_step_labels_sit_on_each_steps_newline(tokenizer) -> None:
    ex = encode_step_example(tokenizer, "Question: q\nAnswer:\n", ["1 + 2 = 3", "3 * 2 = 6"], [1, 0], 100)
    positions = [i for i, label in enumerate(ex.labels) if label != IGNORE]
    assert [tokenizer.decode(ex.input_ids[i]) for i in positions] == ["\n", "\n"]
    assert tokenizer.decode(ex.input_ids[positions[0] + 1:positions[1]]) == "3 * 2 = 6"


@pytest.mark.parametrize("row, message", [
    ({**ROWS["sorm"], "labels": [True]}, "row s: 1 labels for .* steps in 'completions'"),
    ({**ROWS["orm"], "completions": [], "labels": []}, "row o: no steps in 'completions'"),
    ({**ROWS["local_refiner"], "bad_step": 9}, "row l: field 'bad_step': bad_step 9 is outside"),
    ({k: v for k, v in ROWS["global_refiner"].items() if k != "draft"}, "row g: missing field 'draft'"),
    ({**ROWS["policy"], "solution": " "}, "row p: empty target"),
])
def test_bad_rows_are_named(row, message, tokenizer) -> None:
    objective = {"s": "sorm", "o": "orm", "l": "local_refiner", "g": "global_refiner", "p": "policy"}[row["id"]]
    with pytest.raises(ValueError, match=message):
        encode_row(objective, tokenizer, row, 400)


def test_over_long_rows_are_named(tokenizer) -> None:
    with pytest.raises(ValueError, match=r"row s: \d+ tokens > max_length 30"):
        encode_row("sorm", tokenizer, ROWS["sorm"], 30)


def test_step_reward_loss_ignores_unlabelled_tokens() -> None:
    labels = torch.tensor([[IGNORE, 1, IGNORE, 0]])
    logits = torch.tensor([[123.0, 50.0, -77.0, -50.0]])
    assert step_reward_loss(logits, labels).item() == pytest.approx(0.0, abs=1e-6)
    assert step_scores(logits, labels) == [[pytest.approx(1.0), pytest.approx(0.0)]]


def test_a_token_classifier_from_the_policy_learns_step_labels(tiny_model_dir, tokenizer, tmp_path) -> None:
    from transformers import AutoModelForTokenClassification

    from glore_ray.models.encoding import collate

    torch.manual_seed(0)
    model = AutoModelForTokenClassification.from_pretrained(tiny_model_dir, num_labels=1)
    batch = collate([encode_row(o, tokenizer, ROWS[o], 400) for o in ("orm", "sorm")], tokenizer.pad_token_id)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(60):
        loss = step_reward_loss(model(input_ids=batch["input_ids"]).logits, batch["labels"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForTokenClassification.from_pretrained(tmp_path)
    assert reloaded.config.architectures == ["LlamaForTokenClassification"]
    scores = step_scores(reloaded(input_ids=batch["input_ids"]).logits, batch["labels"])
    assert [round(s) for s in scores[1]] == [1] + [0] * (len(P.steps) - 1)


def test_label_weights_weigh_the_step_loss(tokenizer) -> None:
    ex = encode_step_example(tokenizer, "Question: q\nAnswer:\n", ["1 + 2 = 3", "3 * 2 = 6"], [1, 0], 100,
                             weights=[3.0, 1.0])
    batch = collate([ex], tokenizer.pad_token_id)
    logits = torch.zeros(batch["labels"].shape)
    logits[batch["labels"] == 1] = 2.0  # the good step scored right, the bad one at even odds
    per_step = [torch.nn.functional.softplus(torch.tensor(-2.0)), torch.tensor(math.log(2))]
    assert step_reward_loss(logits, batch["labels"]) == pytest.approx(float(sum(per_step) / 2))
    assert step_reward_loss(logits, batch["labels"], batch["weights"]) == pytest.approx(
        float((3 * per_step[0] + per_step[1]) / 4))
    with pytest.raises(ValueError, match="row r: field 'weights'"):
        encode_step_example(tokenizer, "q", ["a = 1", "b = 2"], [1, 0], 100, "r", weights=[1.0])


def test_the_implicit_prm_starts_at_even_odds_and_reads_only_the_solution(tiny_model_dir, tokenizer) -> None:
    from transformers import AutoModelForCausalLM

    policy = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    reference = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    spec = OBJECTIVES["orm"].with_head("implicit", 0.1)
    assert spec.needs_reference and spec.auto_class == "AutoModelForCausalLM"
    assert OBJECTIVES["policy"].with_head("implicit", 0.1) is OBJECTIVES["policy"]
    ex = encode_step_example(tokenizer, solve_prompt(P.question), list(P.steps), [1] * len(P.steps), 400)
    batch = collate([ex], tokenizer.pad_token_id)
    # pi = pi_ref: every value is 0, a loss of log 2.
    assert spec.loss(policy, batch, reference).item() == pytest.approx(math.log(2), abs=1e-6)
    with pytest.raises(ValueError, match="needs the reference model"):
        spec.loss(policy, batch)
    with torch.no_grad():
        policy.lm_head.weight.add_(torch.randn_like(policy.lm_head.weight))
        ref_logits = reference(input_ids=batch["input_ids"]).logits
        values = implicit_values(policy(input_ids=batch["input_ids"]).logits, ref_logits, batch, 0.1)
    assert torch.all(values[0, :ex.prompt_len] == 0) and values[0, -1] != 0  # the prompt's tokens are left out


def test_an_outcome_model_keeps_only_each_rows_last_label() -> None:
    labels = torch.tensor([[IGNORE, 1, IGNORE, 1, 1, IGNORE], [IGNORE, 0, IGNORE, IGNORE, IGNORE, IGNORE]])
    assert final_labels_only(labels).tolist() == [[IGNORE, IGNORE, IGNORE, IGNORE, 1, IGNORE],
                                                  [IGNORE, 0, IGNORE, IGNORE, IGNORE, IGNORE]]
