"""Policy SFT in one process, without Ray (`glore sft`, the benchmarks' quick policies): the same
examples, loop and update as a Ray Train worker's, over an in-memory list of problems."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Iterable, Iterator, Sequence

import torch

from glore_ray.config import TrainConfig
from glore_ray.core.problems import Problem
from glore_ray.core.prompts import solve_prompt
from glore_ray.models.encoding import EncodedExample, ExampleTooLong, collate, encode_example

log = logging.getLogger(__name__)


def encode_problems(tokenizer, problems: Iterable[Problem], cfg: TrainConfig) -> list[EncodedExample]:
    """SFT examples (question -> gold solution); over-long ones fail, or are skipped and counted."""
    examples, skipped = [], 0
    for p in problems:
        try:
            examples.append(encode_example(tokenizer, solve_prompt(p.question), p.solution(), cfg.max_length, p.id))
        except ExampleTooLong:
            if not cfg.skip_long:
                raise
            skipped += 1
    if skipped:
        log.info(f"skipped {skipped} examples longer than {cfg.max_length} tokens (policy.skip_long)")
    return examples


def shuffled_batches(examples: Sequence[EncodedExample], batch_size: int, pad_id: int,
                     seed: int) -> Iterator[dict[str, torch.Tensor]]:
    """Endless batches, reshuffled every epoch."""
    if len(examples) < batch_size:
        raise ValueError(f"{len(examples)} training examples cannot fill one batch of {batch_size}")
    rng = random.Random(seed)
    order = list(range(len(examples)))
    while True:
        rng.shuffle(order)
        for start in range(0, len(order) - batch_size + 1, batch_size):
            yield collate([examples[i] for i in order[start:start + batch_size]], pad_id)


def train_policy_local(cfg: TrainConfig, problems: Iterable[Problem], model_dir: str, out: str) -> str:
    """Supervised fine-tuning of the policy on gold solutions, in this process."""
    from glore_ray.models.tiny import load_model_folder, save_model_folder
    from glore_ray.training.loop import train_steps
    from glore_ray.training.objectives import objective
    from glore_ray.training.strategy import TorchStrategy

    torch.manual_seed(cfg.seed)
    model, tokenizer = load_model_folder(model_dir)
    examples = encode_problems(tokenizer, problems, cfg)
    batches = shuffled_batches(examples, cfg.batch_size, tokenizer.pad_token_id, cfg.seed)
    strategy = TorchStrategy(model, cfg)
    t0 = time.perf_counter()
    train_steps(model, batches, cfg, objective("policy").loss, strategy.step, on_log=lambda s: log.info(
        f"sft step {s.step}/{cfg.steps}  loss {s.loss:.4f}  lr {s.lr:.2e}  {s.tokens_per_s:,.0f} tok/s"))
    log.info(f"sft: {len(examples)} examples, {cfg.steps} steps in {time.perf_counter() - t0:.0f} s")
    save_model_folder(model, tokenizer, out)
    return out
