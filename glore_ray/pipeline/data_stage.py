"""The pipeline's first stages, in the driver: the data splits (validated once, bad records
quarantined) with the policy's SFT rows, and the tiny policy built from scratch. `glore organism`
and `glore build-model` run the same functions."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator

from glore_ray.config import DataConfig, ModelConfig
from glore_ray.core.organism import generate
from glore_ray.core.problems import Problem, load_problems
from glore_ray.core.prompts import solve_prompt
from glore_ray.core.quarantine import Quarantine
from glore_ray.io import write_jsonl
from glore_ray.layout import MODEL, output
from glore_ray.pipeline.runner import StageContext

log = logging.getLogger(__name__)
TOKENIZER_CORPUS = 5000
"""Problems whose text trains the tokenizer: enough to see every word of the task."""


def report_quarantine(quarantine: Quarantine, path: str) -> None:
    """Keep the bad records in a file and say so; a no-op when there are none."""
    if not quarantine:
        return
    quarantine.write_jsonl(path)
    log.info(f"{quarantine.summary()} -> {path}")
    for record in quarantine.records[1:5]:
        log.info(f"  also: {record}")


def problems_for_split(data: DataConfig, split: str, quarantine: Quarantine) -> Iterator[Problem]:
    """The configured source's problems for `train`, `validation` or `test`."""
    if data.source == "organism":
        return generate(data.organism, split)
    path = {"train": data.train_path, "validation": data.validation_path, "test": data.test_path}[split]
    return load_problems(path, quarantine=quarantine, keep_calculator=data.keep_calculator)


def read_problems(path: str, quarantine_to: str, limit: int | None = None) -> list[Problem]:
    """The first `limit` problems of a file; bad records are logged and written to `quarantine_to`."""
    quarantine = Quarantine()
    problems = list(itertools.islice(load_problems(path, quarantine=quarantine), limit))
    report_quarantine(quarantine, quarantine_to)
    return problems


def write_split(data: DataConfig, split: str, out: str) -> int:
    """Write a split as our problems JSONL; bad source records go to `<out>.quarantine.jsonl`."""
    quarantine = Quarantine()
    count = write_jsonl(out, (p.to_row() for p in problems_for_split(data, split, quarantine)))
    log.info(f"{split}: {count} problems -> {out}")
    report_quarantine(quarantine, f"{out}.quarantine.jsonl")
    return count


def write_sft_rows(problems_path: str, out: str) -> int:
    """The policy's SFT rows (id, question, solution: the gold steps), streamed from a problems file
    that the data stage already validated."""
    quarantine = Quarantine()
    count = write_jsonl(out, ({"id": p.id, "question": p.question, "solution": p.solution()}
                              for p in load_problems(problems_path, quarantine=quarantine)))
    if quarantine:
        raise ValueError(f"{problems_path}: {quarantine.summary()} in a file the data stage wrote")
    return count


def build_tiny_policy(model: ModelConfig, seed: int, train_data: str, out: str) -> str:
    """Train the tokenizer on the task's text and save a randomly initialised tiny Llama."""
    from glore_ray.models.tiny import build_model, save_model_folder, train_tokenizer

    problems = read_problems(train_data, f"{out}/quarantine.jsonl", limit=TOKENIZER_CORPUS)
    tokenizer = train_tokenizer((solve_prompt(p.question) + p.solution() for p in problems), model.vocab_size)
    built = build_model(model, tokenizer, seed=seed)
    save_model_folder(built, tokenizer, out)
    n_params = sum(p.numel() for p in built.parameters())
    log.info(f"tiny policy: {n_params / 1e6:.2f}M parameters, vocabulary {len(tokenizer)} -> {out}")
    return out


def data_splits(data: DataConfig) -> tuple[str, ...]:
    """The splits the data stage writes: the validation split when the source has one."""
    has_validation = data.source == "organism" or bool(data.validation_path)
    return ("train", "validation", "test") if has_validation else ("train", "test")


def data_sources(data: DataConfig) -> dict[str, str]:
    """The files the data stage reads, by split (none for the organism)."""
    if data.source != "files":
        return {}
    return {f"{split}_source": getattr(data, f"{split}_path") for split in data_splits(data)}


def run_data(ctx: StageContext, data: DataConfig) -> dict:
    """Every split as problems JSONL and the policy's SFT rows."""
    counts = {split: write_split(data, split, f"{ctx.dir}/{split}.jsonl") for split in data_splits(data)}
    counts["sft_rows"] = write_sft_rows(f"{ctx.dir}/train.jsonl", f"{ctx.dir}/sft.jsonl")
    return counts


def run_init_model(ctx: StageContext, model: ModelConfig, seed: int) -> dict:
    """The tiny policy (tokenizer trained on `train`, random weights) in `model/`."""
    build_tiny_policy(model, seed, ctx.inputs["train"], output(ctx.dir, MODEL))
    return {"built": "tiny"}
