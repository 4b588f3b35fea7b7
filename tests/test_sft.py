"""Supervised fine-tuning as plain torch: the prompt is masked out and the loss goes down."""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest
import torch

from glore_ray.config import GloreConfig, TrainConfig
from glore_ray.core.organism import generate
from glore_ray.core.prompts import solve_prompt
from glore_ray.models.encoding import IGNORE, ExampleTooLong, collate, encode_example
from glore_ray.models.tiny import load_model_folder
from glore_ray.training.local import encode_problems
from glore_ray.training.loop import lr_at, train_steps
from glore_ray.training.losses import causal_lm_loss
from glore_ray.training.objectives import objective
from glore_ray.training.strategy import TorchStrategy

PROBLEMS = list(generate(GloreConfig().data.organism, "train", 64))


def test_only_target_tokens_carry_labels(tiny_model_dir) -> None:
    _, tokenizer = load_model_folder(tiny_model_dir)
    p = PROBLEMS[0]
    ex = encode_example(tokenizer, solve_prompt(p.question), p.solution(), 320, p.id)
    n_prompt = len(tokenizer(solve_prompt(p.question))["input_ids"])
    assert ex.input_ids[0] == tokenizer.bos_token_id and ex.input_ids[-1] == tokenizer.eos_token_id
    assert ex.labels[:n_prompt] == [IGNORE] * n_prompt
    assert ex.labels[n_prompt:] == ex.input_ids[n_prompt:]
    assert tokenizer.decode(ex.input_ids[n_prompt:-1]) == p.solution()


def test_loss_ignores_prompt_and_padding() -> None:
    labels = torch.tensor([[IGNORE, IGNORE, 3, 4], [IGNORE, 5, IGNORE, IGNORE]])
    logits = torch.zeros(2, 4, 8)
    logits[0, 1, 3] = logits[0, 2, 4] = logits[1, 0, 5] = 100.0  # the right next tokens
    logits[0, 0] = logits[1, 1] = logits[1, 2] = torch.randn(8)  # predictions of masked positions
    assert causal_lm_loss(logits, labels).item() == pytest.approx(0.0, abs=1e-6)


def test_bad_examples_name_the_row(tiny_model_dir) -> None:
    _, tokenizer = load_model_folder(tiny_model_dir)
    with pytest.raises(ValueError, match="row organism:train:7: empty target"):
        encode_example(tokenizer, "Question: x\nAnswer:\n", "  ", 320, "organism:train:7")
    with pytest.raises(ExampleTooLong, match=r"row organism:train:0: \d+ tokens > max_length 20"):
        encode_problems(tokenizer, iter(PROBLEMS), TrainConfig(max_length=20))


def test_skip_long_is_an_explicit_counted_choice(tiny_model_dir, caplog) -> None:
    _, tokenizer = load_model_folder(tiny_model_dir)
    lengths = [len(encode_example(tokenizer, solve_prompt(p.question), p.solution(), 10**6).input_ids)
               for p in PROBLEMS]
    limit = sorted(lengths)[len(lengths) // 2]
    with caplog.at_level("INFO", logger="glore_ray"):
        kept = encode_problems(tokenizer, iter(PROBLEMS), TrainConfig(max_length=limit, skip_long=True))
    n_long = sum(n > limit for n in lengths)
    assert len(kept) == len(PROBLEMS) - n_long > 0
    assert caplog.messages == [f"skipped {n_long} examples longer than {limit} tokens (policy.skip_long)"]


def test_loss_goes_down_on_a_fixed_batch(tiny_model_dir) -> None:
    torch.manual_seed(0)
    model, tokenizer = load_model_folder(tiny_model_dir)
    examples = encode_problems(tokenizer, iter(PROBLEMS[:8]), TrainConfig())
    batch = collate(examples, tokenizer.pad_token_id)
    before = causal_lm_loss(model(input_ids=batch["input_ids"]).logits, batch["labels"]).item()
    logs = []
    cfg = TrainConfig(steps=30, warmup_steps=3, log_every=10)
    train_steps(model, itertools.repeat(batch), cfg, objective("policy").loss, TorchStrategy(model, cfg).step, logs.append)
    after = causal_lm_loss(model(input_ids=batch["input_ids"]).logits, batch["labels"]).item()
    assert [log.step for log in logs] == [10, 20, 30]
    assert after < 0.7 * before
    assert logs[-1].loss < logs[0].loss


def test_learning_rate_warms_up_then_decays_to_the_floor() -> None:
    cfg = replace(TrainConfig(), steps=100, warmup_steps=10, lr=1.0, min_lr_ratio=0.1)
    assert lr_at(0, cfg) == pytest.approx(0.1) and lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(99, cfg) == pytest.approx(0.1, abs=1e-3)
    assert all(lr_at(s, cfg) >= lr_at(s + 1, cfg) for s in range(10, 99))
