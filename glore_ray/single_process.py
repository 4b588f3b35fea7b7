"""Single-process building blocks behind the CLI's verbs and the pipeline's first stages: data
splits, the tiny policy, local SFT, and sampling a policy's solutions with a table."""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from glore_ray.config import GloreConfig, TrainConfig
from glore_ray.data import Problem, Quarantine, load_problems, write_jsonl
from glore_ray.organism import generate
from glore_ray.prompts import solve_prompt

Log = Callable[[str], None]


TOKENIZER_CORPUS = 5000
"""Problems whose text trains the tokenizer: enough to see every word of the task."""


def echo(message: str) -> None:
    print(message, flush=True)  # progress must show up live in `ray job logs` and piped output


def report_quarantine(quarantine: Quarantine, path: str, log: Log) -> None:
    """Keep the bad records in a file and say so; a no-op when there are none."""
    if not quarantine:
        return
    quarantine.write_jsonl(path)
    log(f"{quarantine.summary()} -> {path}")
    for record in quarantine.records[1:5]:
        log(f"  also: {record}")


def problems_for_split(cfg: GloreConfig, split: str, quarantine: Quarantine) -> Iterator[Problem]:
    """The configured source's problems for `train`, `validation` or `test`."""
    if cfg.data.source == "organism":
        return generate(cfg.data.organism, split)
    path = {"train": cfg.data.train_path, "validation": cfg.data.validation_path, "test": cfg.data.test_path}[split]
    return load_problems(path, quarantine=quarantine, keep_calculator=cfg.data.keep_calculator)


def read_problems(cfg: GloreConfig, path: str, quarantine_to: str, log: Log = echo,
                  limit: int | None = None) -> list[Problem]:
    """The first `limit` problems of a file; bad records are logged and written to `quarantine_to`."""
    quarantine = Quarantine()
    problems = list(itertools.islice(
        load_problems(path, quarantine=quarantine, keep_calculator=cfg.data.keep_calculator), limit))
    report_quarantine(quarantine, quarantine_to, log)
    return problems


def write_split(cfg: GloreConfig, split: str, out: str, log: Log = echo) -> int:
    """Write a split as our problems JSONL; bad source records go to `<out>.quarantine.jsonl`."""
    quarantine = Quarantine()
    count = write_jsonl(out, (p.to_row() for p in problems_for_split(cfg, split, quarantine)))
    log(f"{split}: {count} problems -> {out}")
    report_quarantine(quarantine, f"{out}.quarantine.jsonl", log)
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


def build_tiny_policy(cfg: GloreConfig, train_data: str, out: str, log: Log = echo) -> str:
    """Train the tokenizer on the task's text and save a randomly initialised tiny Llama."""
    from glore_ray.tiny_model import build_model, save_model_folder, train_tokenizer

    problems = read_problems(cfg, train_data, f"{out}/quarantine.jsonl", log, limit=TOKENIZER_CORPUS)
    tokenizer = train_tokenizer((solve_prompt(p.question) + p.solution() for p in problems), cfg.model.vocab_size)
    model = build_model(cfg.model, tokenizer, seed=cfg.policy.seed)
    save_model_folder(model, tokenizer, out)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"tiny policy: {n_params / 1e6:.2f}M parameters, vocabulary {len(tokenizer)} -> {out}")
    return out


def encode_problems(tokenizer, problems: Iterable[Problem], cfg: TrainConfig, log: Log = echo) -> list:
    """SFT examples (question -> gold solution); over-long ones fail, or are skipped and counted."""
    from glore_ray.sft import ExampleTooLong, encode_example

    examples, skipped = [], 0
    for p in problems:
        try:
            examples.append(encode_example(tokenizer, solve_prompt(p.question), p.solution(), cfg.max_length, p.id))
        except ExampleTooLong:
            if not cfg.skip_long:
                raise
            skipped += 1
    if skipped:
        log(f"skipped {skipped} examples longer than {cfg.max_length} tokens (policy.skip_long)")
    return examples


def train_policy_local(cfg: GloreConfig, train_data: str, model_dir: str, out: str, log: Log = echo) -> str:
    """Supervised fine-tuning of the policy on gold solutions, in this process."""
    import torch

    from glore_ray.sft import causal_lm_batch_loss, shuffled_batches
    from glore_ray.train_loop import TorchUpdate, train_steps
    from glore_ray.tiny_model import load_model_folder, save_model_folder

    torch.manual_seed(cfg.policy.seed)
    model, tokenizer = load_model_folder(model_dir)
    problems = read_problems(cfg, train_data, f"{out}/quarantine.jsonl", log)
    examples = encode_problems(tokenizer, problems, cfg.policy, log)
    batches = shuffled_batches(examples, cfg.policy.batch_size, tokenizer.pad_token_id, cfg.policy.seed)
    t0 = time.perf_counter()
    train_steps(model, batches, cfg.policy, causal_lm_batch_loss, TorchUpdate(model, cfg.policy), on_log=lambda s: log(
        f"sft step {s.step}/{cfg.policy.steps}  loss {s.loss:.4f}  lr {s.lr:.2e}  {s.tokens_per_s:,.0f} tok/s"))
    log(f"sft: {len(examples)} examples, {cfg.policy.steps} steps in {time.perf_counter() - t0:.0f} s")
    save_model_folder(model, tokenizer, out)
    return out


def evaluate_policy(cfg: GloreConfig, test_data: str, model_dir: str, out_dir: str, log: Log = echo) -> dict:
    """Greedy and k sampled solutions per test problem, graded; writes samples and a summary."""
    from glore_ray.engines import Sampling, make_engine
    from glore_ray.policy_eval import sample_and_grade, summarize, summary_table

    problems = read_problems(cfg, test_data, f"{out_dir}/quarantine.jsonl", log, limit=cfg.eval.n_problems)
    engine = make_engine(model_dir, cfg.engine)
    t0 = time.perf_counter()
    greedy = Sampling(n=1, temperature=0.0, max_tokens=cfg.sampling.max_tokens, seed=cfg.sampling.seed)
    sampled = Sampling(n=cfg.eval.k, temperature=cfg.eval.temperature, top_p=cfg.sampling.top_p,
                       max_tokens=cfg.sampling.max_tokens, seed=cfg.sampling.seed)
    samples = (sample_and_grade(engine, problems, greedy, "greedy")
               + sample_and_grade(engine, problems, sampled, "sampled"))
    elapsed = time.perf_counter() - t0
    summary = summarize(samples) | {"engine": engine.name, "generation_seconds": round(elapsed, 1),
                                    "generated_tokens": sum(s.n_tokens for s in samples)}
    out = Path(out_dir)
    write_jsonl(str(out / "samples.jsonl"), (s.to_row() for s in samples))
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    log(summary_table(summary, f"{cfg.run_name}: policy on {test_data} ({engine.name} engine)"))
    return summary
