"""Can a small verifier verify? Reward-model recipes on the VALIDATION split (issue 25, part 2).

    .venv/bin/python bench/verifier_study.py [--questions 2000] [--k 8] [--steps 600] [--set KEY=VALUE ...]

One process, no Ray: the pipeline's policy (its default config, or `--set` overrides: the organism
regime), trained as the pipeline trains it; greedy + k samples at T = 1 on reward-model questions
(training questions after the first `--skip`, disjoint from anything but the policy's gold SFT);
greedy + 4 samples on `--val` validation questions; every solution graded by the exact checker.
Then, on the PRM's exact step labels, one row per recipe with the same columns:

- diagnostics: the untrained policy's summed / mean / min token log-prob (baselines), a logistic
  probe on the frozen policy's hidden states at the answer line's newline, and an overfit of 256
  solutions (can the value-head path learn at all?);
- (a) value head, pooled BCE, labels weighted per (step index, label) (issue 25, part 1);
- (b) the same on question-grouped batches of the questions with a right and a wrong solution;
- (d) (b) plus a within-question Bradley-Terry term on the answer line's logit;
- (h) the implicit PRM on outcome labels (the answer line only), and on every step's exact label.

Columns: training CPU-minutes (wall x threads), in-sample within-question AUROC (200 training
questions), held-out within-question AUROC (validation greedy + T = 1 samples),
`candidate_auroc` (here: the pairs that include the greedy draft, the ensemble's population;
the pipeline's report measures it over the draft and its refinements), `rescue_auroc` (a wrong
draft against a right sample), `draft_auroc` (greedy drafts across questions), and
`draft_first_error_f1`. Writes bench/results/verifier_study.json (flat keys `<recipe>_<column>`)
and verifier_study.md. The test split is never read.

`--curve 150,300,600,1200` measures the chosen recipe (h on step labels) instead: AUROC against
rows seen, at each checkpoint of one run per `--curve-shares` share of the questions, and where a
log-linear fit would cross the gate (bench/results/verifier_curve.json and .md).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bench.results_table import RESULTS, publish  # noqa: E402
from glore_ray.config import GloreConfig, TrainConfig, load_config  # noqa: E402
from glore_ray.config.ensemble import REPORT_STEP_THRESHOLD  # noqa: E402
from glore_ray.core.generation import Sampling  # noqa: E402
from glore_ray.core.grading import good_steps, scored_steps  # noqa: E402
from glore_ray.core.labels import balance_weights, step_label_counts  # noqa: E402
from glore_ray.core.organism import check_solution  # noqa: E402
from glore_ray.core.prompts import solve_prompt  # noqa: E402
from glore_ray.core.stats import auroc, first_error_f1, within_question_auroc  # noqa: E402
from glore_ray.models.encoding import (  # noqa: E402
    collate,
    encode_step_example,
    implicit_values,
    step_scores,
    token_logprobs,
)
from glore_ray.training.loop import lr_at  # noqa: E402
from glore_ray.training.losses import last_labelled, step_reward_loss  # noqa: E402
from glore_ray.training.objectives import objective  # noqa: E402

THREADS = 2
COLUMNS = ("questions", "rows", "cpu_minutes", "in_sample_auroc", "heldout_auroc", "candidate_auroc",
           "rescue_auroc", "draft_auroc", "draft_first_error_f1")


@dataclass
class Solution:
    problem_id: str
    question: str
    text: str
    steps: list[str]
    correct: bool
    first_wrong: int | None
    kind: str | None
    greedy: bool

    @property
    def labels(self) -> list[bool]:
        return good_steps(self.first_wrong, len(self.steps))


def prepare(cfg: GloreConfig, work: Path) -> str:
    """The pipeline's policy for `cfg` (its data, tiny init and SFT budget), cached in `work`."""
    from glore_ray.pipeline.data_stage import build_tiny_policy, read_problems, write_split
    from glore_ray.training.local import train_policy_local

    policy = work / "policy"
    if (policy / "config.json").is_file():
        return str(policy)
    for split in ("train", "validation"):
        write_split(cfg.data, split, str(work / f"{split}.jsonl"))
    init = build_tiny_policy(cfg.model, cfg.policy.seed, str(work / "train.jsonl"), str(work / "init"))
    problems = read_problems(str(work / "train.jsonl"), str(work / "quarantine.jsonl"))
    t0 = time.perf_counter()
    train_policy_local(replace(cfg.policy, log_every=100), problems, init, str(policy))
    (work / "policy_train_s.txt").write_text(f"{time.perf_counter() - t0:.1f}\n")
    return str(policy)


def sample(cfg: GloreConfig, policy: str, split: str, first: int, n: int, k: int, work: Path) -> list[Solution]:
    """Greedy + k samples at T = 1 of problems first .. first + n of `split`, graded, distinct per
    question (the greedy one flagged), cached in `work`."""
    from glore_ray.core.organism import generate
    from glore_ray.models.engines import make_engine

    cache = work / f"{split}-{first}-{n}-{k}.jsonl"
    if cache.is_file():
        return [Solution(**json.loads(line)) for line in cache.read_text().splitlines()]
    problems = list(generate(cfg.data.organism, split, first + n))[first:]
    engine = make_engine(policy, cfg.engine)
    prompts = [solve_prompt(p.question) for p in problems]
    greedy = Sampling(n=1, temperature=0.0, max_tokens=cfg.sampling.max_tokens)
    samples = Sampling(n=k, temperature=1.0, max_tokens=cfg.sampling.max_tokens, seed=cfg.sampling.seed)
    out = []
    for start in range(0, len(prompts), 256):
        batch = prompts[start:start + 256]
        generations = engine.generate(batch * 2, [greedy] * len(batch) + [samples] * len(batch))
        for j, problem in enumerate(problems[start:start + len(batch)]):
            seen = set()
            for g, c in [(True, c) for c in generations[j].completions] + \
                        [(False, c) for c in generations[len(batch) + j].completions]:
                steps = scored_steps(c.text)
                if c.text in seen or not steps:
                    continue
                seen.add(c.text)
                check = check_solution(problem, c.text)
                out.append(Solution(problem.id, problem.question, c.text, steps, _right(problem, c.text),
                                    check.first_wrong, check.kind, g))
    cache.write_text("".join(json.dumps(s.__dict__) + "\n" for s in out))
    return out


def _right(problem, text: str) -> bool:
    from glore_ray.core.grading import is_correct

    return is_correct(text, problem.gold)


def by_question(solutions: list[Solution]) -> dict[str, list[Solution]]:
    groups: dict[str, list[Solution]] = {}
    for s in solutions:
        groups.setdefault(s.problem_id, []).append(s)
    return groups


def mixed(solutions: list[Solution], per_question: int) -> list[list[Solution]]:
    """The questions with both a right and a wrong solution, at most `per_question` each."""
    return [g[:per_question] for g in by_question(solutions).values()
            if any(s.correct for s in g) and not all(s.correct for s in g)]


class Reader:
    """Reads solutions the way the pipeline's reward models do (prompt, steps, newlines)."""

    def __init__(self, tokenizer, max_length: int = 512):
        self.tokenizer, self.max_length = tokenizer, max_length

    def batch(self, solutions: list[Solution], weights: dict | None = None) -> dict:
        examples = [encode_step_example(self.tokenizer, solve_prompt(s.question), s.steps, s.labels, self.max_length,
                                        s.problem_id, None if weights is None else
                                        [weights[(i, label)] for i, label in enumerate(s.labels)])
                    for s in solutions]
        return collate(examples, self.tokenizer.pad_token_id)


class Recipe:
    """A reward model under training: `loss(batch, group_sizes)` and `values(batch)` (P(good) per step)."""

    def __init__(self, policy: str, head: str, beta: float = 0.1, targets: str = "steps", bradley_terry: float = 0.0):
        from transformers import AutoModelForCausalLM

        spec = objective("sorm" if targets == "steps" else "orm").with_head(head, beta)
        self.spec, self.bradley_terry = spec, bradley_terry
        torch.manual_seed(0)
        self.model = spec.load_model(policy)
        self.reference = AutoModelForCausalLM.from_pretrained(policy).eval() if spec.needs_reference else None

    def logits(self, batch: dict) -> torch.Tensor:
        out = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        if self.reference is None:
            return out.reshape(batch["labels"].shape).float()
        with torch.no_grad():
            reference = self.reference(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        return implicit_values(out, reference, batch, self.spec.implicit_beta)

    def loss(self, batch: dict, groups: list[list[int]]) -> torch.Tensor:
        if not self.bradley_terry:
            return self.spec.loss(self.model, batch, self.reference)
        # The value head's loss and the pairwise term from one forward pass.
        logits = self.logits(batch)
        loss = step_reward_loss(logits, batch["labels"], batch.get("weights"))
        finals = _finals(logits, batch["labels"])
        right = batch["labels"].gather(1, last_labelled(batch["labels"])[:, None])[:, 0] == 1
        terms = [torch.nn.functional.logsigmoid(finals[r] - finals[w]) for g in groups
                 for r in g if right[r] for w in g if not right[w]]
        if terms:
            loss = loss - self.bradley_terry * torch.stack(terms).mean()
        return loss

    def values(self, batch: dict) -> list[list[float]]:
        with torch.no_grad():
            return step_scores(self.logits(batch), batch["labels"])


def _finals(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return logits.gather(1, last_labelled(labels)[:, None])[:, 0]


def train(recipe: Recipe, reader: Reader, batches: list[tuple[list[Solution], list[list[int]]]], steps: int,
          lr: float, weights: dict | None, checkpoint=None, every: frozenset[int] = frozenset()) -> float:
    """`steps` AdamW steps over `batches` (cycled, reshuffled per epoch); returns CPU-minutes of
    training. After each step in `every`, `checkpoint(step, rows_seen, cpu_minutes)` is called
    with the model in eval mode (its time is not counted)."""
    cfg = TrainConfig(steps=steps, lr=lr, warmup_steps=min(30, steps // 10), min_lr_ratio=0.1)
    optimizer = torch.optim.AdamW([p for p in recipe.model.parameters() if p.requires_grad], lr=lr,
                                  weight_decay=0.01)
    recipe.model.train()
    rng, order, t0, rows_seen, paused = random.Random(0), [], time.perf_counter(), 0, 0.0
    for step in range(steps):
        if not order:
            order = rng.sample(range(len(batches)), len(batches))
        solutions, groups = batches[order.pop()]
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, cfg)
        loss = recipe.loss(reader.batch(solutions, weights), groups)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(recipe.model.parameters(), 1.0)
        optimizer.step()
        rows_seen += len(solutions)
        if (step + 1) % 100 == 0:
            print(f"  step {step + 1}/{steps} loss {loss.item():.4f} {time.perf_counter() - t0:.0f} s", flush=True)
        if step + 1 in every:
            t1 = time.perf_counter()
            recipe.model.eval()
            checkpoint(step + 1, rows_seen, (t1 - t0 - paused) * THREADS / 60)
            recipe.model.train()
            paused += time.perf_counter() - t1
    recipe.model.eval()
    return (time.perf_counter() - t0 - paused) * THREADS / 60


def grouped_batches(questions: list[list[Solution]], per_batch: int) -> list[tuple[list[Solution], list[list[int]]]]:
    """Batches of `per_batch` questions with all their solutions (index groups per question)."""
    out = []
    for start in range(0, len(questions), per_batch):
        solutions, groups = [], []
        for g in questions[start:start + per_batch]:
            groups.append(list(range(len(solutions), len(solutions) + len(g))))
            solutions += g
        out.append((solutions, groups))
    return out


def pooled_batches(solutions: list[Solution], size: int, seed: int = 0) -> list[tuple[list[Solution], list]]:
    shuffled = random.Random(seed).sample(solutions, len(solutions))
    return [(shuffled[i:i + size], []) for i in range(0, len(shuffled) - size + 1, size)]


def score_all(value_fn, reader: Reader, solutions: list[Solution], size: int = 64) -> list[list[float]]:
    out = []
    for start in range(0, len(solutions), size):
        out += value_fn(reader.batch(solutions[start:start + size]))
    return out


def metrics(solutions: list[Solution], values: list[list[float]]) -> dict:
    """The study's columns on one population from per-step values (the last is the solution's score)."""
    finals = {id(s): v[-1] for s, v in zip(solutions, values, strict=True)}
    groups = by_question(solutions)
    heldout, _ = within_question_auroc([[(finals[id(s)], s.correct) for s in g] for g in groups.values()])
    candidate = rescue = 0.0
    pairs = rescue_pairs = 0
    for g in groups.values():
        draft = next((s for s in g if s.greedy), None)
        if draft is None:
            continue
        for other in g:
            if other is draft or other.correct == draft.correct:
                continue
            right, wrong = (other, draft) if other.correct else (draft, other)
            hit = 1.0 if finals[id(right)] > finals[id(wrong)] else 0.5 if finals[id(right)] == finals[id(wrong)] else 0.0
            candidate, pairs = candidate + hit, pairs + 1
            if wrong is draft:
                rescue, rescue_pairs = rescue + hit, rescue_pairs + 1
    drafts = [(s, v) for s, v in zip(solutions, values, strict=True) if s.greedy]
    return {"heldout_auroc": heldout, "candidate_auroc": candidate / pairs if pairs else None,
            "candidate_pairs": pairs, "rescue_auroc": rescue / rescue_pairs if rescue_pairs else None,
            "rescue_pairs": rescue_pairs,
            "draft_auroc": auroc([v[-1] for _, v in drafts], [s.correct for s, _ in drafts]),
            # Only a model with a value per step locates an error (the baselines and the probe give one).
            "draft_first_error_f1": first_error_f1([(v, s.first_wrong) for s, v in drafts], REPORT_STEP_THRESHOLD)
            if all(len(v) == len(s.steps) for s, v in drafts) else None,
            "by_error_kind": by_error_kind(groups, finals)}


def by_error_kind(groups: dict[str, list[Solution]], finals: dict) -> dict:
    out: dict[str, list[float]] = {}
    for g in groups.values():
        for right in (s for s in g if s.correct):
            for wrong in (s for s in g if not s.correct):
                a, b = finals[id(right)], finals[id(wrong)]
                out.setdefault(wrong.kind or "answer", []).append(1.0 if a > b else 0.5 if a == b else 0.0)
    return {kind: (round(sum(v) / len(v), 4), len(v)) for kind, v in sorted(out.items())}


def baselines(policy: str, reader: Reader, solutions: list[Solution]) -> dict[str, list[list[float]]]:
    """The untrained policy's summed, mean and min token log-prob of each solution, as a final value."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(policy).eval()
    out: dict[str, list[list[float]]] = {"logprob_sum": [], "logprob_mean": [], "logprob_min": []}
    for start in range(0, len(solutions), 64):
        batch = reader.batch(solutions[start:start + 64])
        with torch.no_grad():
            lp = token_logprobs(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits,
                                batch["input_ids"])
        for row in range(lp.shape[0]):
            tokens = lp[row, batch["solution_start"][row]:int(batch["attention_mask"][row].sum())]
            out["logprob_sum"].append([float(tokens.sum())])
            out["logprob_mean"].append([float(tokens.mean())])
            out["logprob_min"].append([float(tokens.min())])
    return out


def probe(policy: str, reader: Reader, train: list[Solution], held: list[Solution]) -> tuple[list, list]:
    """A logistic probe on the frozen policy's hidden states (every layer, concatenated) at the
    answer line's newline: (in-sample values, held-out values)."""
    import numpy as np
    from transformers import AutoModelForCausalLM

    from glore_ray.models.scorers import fit_logistic

    model = AutoModelForCausalLM.from_pretrained(policy).eval()

    def features(solutions):
        rows = []
        for start in range(0, len(solutions), 64):
            batch = reader.batch(solutions[start:start + 64])
            with torch.no_grad():
                hidden = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                               output_hidden_states=True).hidden_states
            last = last_labelled(batch["labels"])
            rows += torch.cat([h[torch.arange(len(last)), last] for h in hidden[1:]], -1).tolist()
        return np.array(rows)

    x_train, x_held = features(train), features(held)
    w = np.array(fit_logistic(x_train.tolist(), [s.correct for s in train], steps=500))
    score = lambda x: [[float(1 / (1 + math.exp(-v)))] for v in x @ w[:-1] + w[-1]]  # noqa: E731
    return score(x_train), score(x_held)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--questions", type=int, default=2000, help="reward-model training questions")
    parser.add_argument("--skip", type=int, default=2000, help="training questions before them (expert iteration's)")
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--val", type=int, default=400)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--lr", type=float, default=3e-4, help="the implicit PRM's peak learning rate")
    parser.add_argument("--value-lr", type=float, default=1e-3, help="the value heads' (the pipeline's fine-tune lr)")
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--recipes", default="", help="comma-separated subset (default: all)")
    parser.add_argument("--work", default=str(ROOT / "runs" / "verifier-study"))
    parser.add_argument("--name", default="verifier_study")
    parser.add_argument("--tag", default="", help="suffix of this invocation's row names (a setting tried again)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--curve", default="", metavar="STEPS",
                        help="instead of the recipes: the implicit PRM on step labels trained once to the last of "
                             "these comma-separated step counts, measured at each (bench/results/verifier_curve.*)")
    parser.add_argument("--curve-shares", default="1", help="shares of the mixed questions, one curve each")
    args = parser.parse_args()
    torch.set_num_threads(THREADS)
    cfg = load_config(None, args.overrides)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    policy = prepare(cfg, work)
    train_solutions = sample(cfg, policy, "train", args.skip, args.questions, args.k, work)
    held = sample(cfg, policy, "validation", 0, args.val, 4, work)
    from transformers import AutoTokenizer

    reader = Reader(AutoTokenizer.from_pretrained(policy))
    groups = mixed(train_solutions, 8)
    grouped = [s for g in groups for s in g]
    in_sample = [s for g in groups[:200] for s in g]
    weights = balance_weights(step_label_counts(s.labels for s in train_solutions))
    greedy_held = [s for s in held if s.greedy]
    results: dict = {"split": "validation", "settings": ", ".join(args.overrides) or "defaults (the demo's regime)",
                     "train_questions": args.questions, "k": args.k, "validation_questions": args.val,
                     "steps": args.steps, "lr": args.lr, "value_lr": args.value_lr, "beta": args.beta,
                     "train_solutions": len(train_solutions),
                     "train_correct_share": round(sum(s.correct for s in train_solutions) / len(train_solutions), 4),
                     "mixed_questions": len(groups),
                     "validation_greedy_accuracy": round(sum(s.correct for s in greedy_held) / len(greedy_held), 4),
                     "validation_solutions": len(held), "prepare_s": round(time.perf_counter() - t0, 1)}
    if args.curve:
        learning_curve(args, policy, reader, groups, in_sample, held, weights, results)
        return
    rows: dict[str, dict] = {}

    def record(name: str, n_questions: int, n_rows: int, minutes: float, in_values, held_values) -> None:
        name += args.tag
        row = {"questions": n_questions, "rows": n_rows, "cpu_minutes": round(minutes, 2),
               "in_sample_auroc": within_question_auroc(
                   [[(v[-1], s.correct) for s, v in g] for g in by_question_pairs(in_sample, in_values)])[0],
               **metrics(held, held_values)}
        rows[name] = row
        print(name, {k: row[k] for k in COLUMNS}, flush=True)

    wanted = set(filter(None, args.recipes.split(","))) or None
    run = lambda name: wanted is None or name in wanted  # noqa: E731
    if run("baselines"):
        in_base, held_base = baselines(policy, reader, in_sample), baselines(policy, reader, held)
        for name in in_base:
            record(f"untrained_{name}", 0, 0, 0.0, in_base[name], held_base[name])
    if run("probe"):
        t1 = time.perf_counter()
        in_values, held_values = probe(policy, reader, grouped, held)
        record("probe_frozen_hidden_states", len(groups), len(grouped), (time.perf_counter() - t1) * THREADS / 60,
               in_values[:len(in_sample)], held_values)
    recipes = {
        "overfit_256": (lambda: Recipe(policy, "value"), grouped_batches(_first_rows(groups, 256), 4), 1e-3, weights),
        "a_value_head_pooled": (lambda: Recipe(policy, "value"), pooled_batches(train_solutions, 32), args.value_lr,
                                weights),
        "b_value_head_grouped": (lambda: Recipe(policy, "value"), grouped_batches(groups, 4), args.value_lr, weights),
        "d_value_head_grouped_bt": (lambda: Recipe(policy, "value", bradley_terry=1.0), grouped_batches(groups, 4),
                                    args.value_lr, weights),
        "h_implicit_outcome": (lambda: Recipe(policy, "implicit", args.beta, targets="final"),
                               grouped_batches(groups, 4), args.lr, None),
        "h_implicit_steps": (lambda: Recipe(policy, "implicit", args.beta), grouped_batches(groups, 4), args.lr,
                             weights),
    }
    for name, (build, batches, lr, w) in recipes.items():
        if not run(name):
            continue
        print(f"{name}: {len(batches)} batches", flush=True)
        recipe = build()
        steps = 400 if name == "overfit_256" else args.steps
        minutes = train(recipe, reader, batches, steps, lr, w)
        population = [s for b, _ in batches for s in b] if name == "overfit_256" else in_sample
        in_values = score_all(recipe.values, reader, population)
        n_q = len({s.problem_id for b, _ in batches for s in b})
        if name == "overfit_256":
            groups_in = by_question_pairs(population, in_values)
            row_in = within_question_auroc([[(v[-1], s.correct) for s, v in g] for g in groups_in])[0]
            # Against the label it trained on: the answer line is good iff no step is wrong, and 17%
            # of right answers here have a wrong step (a lucky answer), which caps the row above.
            row_labels = within_question_auroc([[(v[-1], s.labels[-1]) for s, v in g] for g in groups_in])[0]
            rows[name + args.tag] = {"questions": n_q, "rows": len(population), "cpu_minutes": round(minutes, 2),
                                     "in_sample_auroc": row_in, "in_sample_label_auroc": row_labels,
                                     **metrics(held, score_all(recipe.values, reader, held))}
            print(name, rows[name + args.tag], flush=True)
            continue
        record(name, n_q, sum(len(b) for b, _ in batches), minutes, in_values,
               score_all(recipe.values, reader, held))
    for name, row in rows.items():
        for column, value in row.items():
            results[f"{name}_{column}"] = round(value, 4) if isinstance(value, float) else value
    results["total_s"] = round(time.perf_counter() - t0, 1)
    existing = RESULTS / f"{args.name}.json"
    if wanted and existing.is_file():  # a subset re-run replaces its rows and keeps the rest
        run_keys = {k: v for k, v in results.items() if any(k.startswith(f"{n}_") for n in rows)}
        run_keys[f"total_s_{'+'.join(sorted(wanted))}{args.tag}"] = results["total_s"]
        if args.tag:
            run_keys[f"lr{args.tag}"] = args.lr
        results = json.loads(existing.read_text()) | run_keys
    publish(args.name, results)
    (RESULTS / f"{args.name}.md").write_text(markdown(results))


CURVE_COLUMNS = ("rows_seen", "epochs", "cpu_minutes", "in_sample_auroc", "heldout_auroc", "candidate_auroc",
                 "rescue_auroc", "draft_first_error_f1")


def learning_curve(args, policy: str, reader: Reader, groups: list[list[Solution]], in_sample: list[Solution],
                   held: list[Solution], weights: dict, results: dict) -> None:
    """AUROC against rows seen for the chosen recipe (h, the implicit PRM on step labels), one
    training run per share of the reward-model questions, measured at each checkpoint. The
    cosine schedule spans the whole run, so an early checkpoint is not a short run's end point."""
    checkpoints, t0 = sorted(int(n) for n in args.curve.split(",")), time.perf_counter()
    results |= {"recipe": "h_implicit_steps", "checkpoints": args.curve}
    points = []
    for share in (float(x) for x in args.curve_shares.split(",")):
        subset = groups[:max(1, round(share * len(groups)))]
        n_rows = sum(len(g) for g in subset)

        def checkpoint(step: int, rows_seen: int, minutes: float, share=share, n_rows=n_rows) -> None:
            in_values = score_all(recipe.values, reader, in_sample)
            row = {"rows_seen": rows_seen, "epochs": rows_seen / n_rows, "cpu_minutes": minutes,
                   "in_sample_auroc": within_question_auroc(
                       [[(v[-1], s.correct) for s, v in g] for g in by_question_pairs(in_sample, in_values)])[0],
                   **metrics(held, score_all(recipe.values, reader, held))}
            row.pop("by_error_kind")
            points.append((share, row))
            for column, value in row.items():
                results[f"share_{share:g}_steps_{step}_{column}"] = round(value, 4) if isinstance(value, float) \
                    else value
            print(f"share {share:g} step {step}", {c: row[c] for c in CURVE_COLUMNS}, flush=True)

        results[f"share_{share:g}_questions"], results[f"share_{share:g}_rows"] = len(subset), n_rows
        recipe = Recipe(policy, "implicit", args.beta)
        train(recipe, reader, grouped_batches(subset, 4), checkpoints[-1], args.lr, weights, checkpoint,
              frozenset(checkpoints))
    results |= gate_extrapolation([row for share, row in points if share == 1.0])
    results["curve_s"] = round(time.perf_counter() - t0, 1)
    publish("verifier_curve", results)
    (RESULTS / "verifier_curve.md").write_text(curve_markdown(results, points))


def gate_extrapolation(points: list[dict]) -> dict:
    """A least-squares line of candidate AUROC against log2(rows seen) over the full-data curve,
    and where it would cross the gate (0.75): an extrapolation, labelled as one."""
    xy = [(math.log2(p["rows_seen"]), p["candidate_auroc"]) for p in points if p["candidate_auroc"] is not None]
    if len(xy) < 3:
        return {}
    mx, my = sum(x for x, _ in xy) / len(xy), sum(y for _, y in xy) / len(xy)
    slope = sum((x - mx) * (y - my) for x, y in xy) / sum((x - mx) ** 2 for x, _ in xy)
    out = {"candidate_auroc_per_doubling_of_rows": round(slope, 4)}
    if slope > 0:
        rows = 2 ** (mx + (0.75 - my) / slope)
        per_row = points[-1]["cpu_minutes"] / points[-1]["rows_seen"]
        out |= {"extrapolated_rows_to_gate": round(rows), "extrapolated_cpu_minutes_to_gate": round(rows * per_row, 1)}
    return out


def curve_markdown(results: dict, points: list[tuple[float, dict]]) -> str:
    fmt = lambda v: "–" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["# Verifier learning curve (validation split)", "",
             f"Recipe: the implicit PRM on the exact step labels (h), lr {results['lr']}, beta {results['beta']}; "
             f"policy greedy {results['validation_greedy_accuracy']:.1%}; one run per share of the "
             f"{results['mixed_questions']} questions with a right and a wrong solution, measured at steps "
             f"{results['checkpoints']} (one cosine schedule over the whole run).", "",
             "| share | " + " | ".join(CURVE_COLUMNS) + " |", "|---" * (len(CURVE_COLUMNS) + 1) + "|"]
    lines += [f"| {share:g} | " + " | ".join(fmt(row[c]) for c in CURVE_COLUMNS) + " |" for share, row in points]
    if "candidate_auroc_per_doubling_of_rows" in results:
        lines += ["", f"Candidate AUROC per doubling of rows seen (least squares, full data): "
                  f"{results['candidate_auroc_per_doubling_of_rows']:+.3f}."]
    if "extrapolated_rows_to_gate" in results:
        lines.append(f"Extrapolated to the gate (0.75): {results['extrapolated_rows_to_gate']:,} rows seen, "
                     f"{results['extrapolated_cpu_minutes_to_gate']} CPU-minutes (an extrapolation, not a run).")
    return "\n".join(lines) + "\n"


def _first_rows(groups: list[list[Solution]], n: int) -> list[list[Solution]]:
    out, total = [], 0
    for g in groups:
        if total >= n:
            break
        out.append(g)
        total += len(g)
    return out


def by_question_pairs(solutions: list[Solution], values: list[list[float]]) -> list[list[tuple[Solution, list]]]:
    groups: dict[str, list] = {}
    for s, v in zip(solutions, values, strict=True):
        groups.setdefault(s.problem_id, []).append((s, v))
    return list(groups.values())


def markdown(results: dict) -> str:
    names = sorted({k.rsplit("_cpu_minutes", 1)[0] for k in results if k.endswith("_cpu_minutes")},
                   key=lambda n: list(results).index(f"{n}_cpu_minutes"))
    fmt = lambda v: "–" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["# Verifier study (validation split)", "",
             f"Regime: {results['settings']}; policy greedy {results['validation_greedy_accuracy']:.1%} on "
             f"{results['validation_questions']} validation questions; {results['train_questions']} reward-model "
             f"questions x (greedy + {results['k']} at T=1), {results['mixed_questions']} with a right and a wrong "
             f"solution; {results['steps']} steps per recipe. Labels: the exact checker's step labels (the PRM's).",
             "", "| recipe | " + " | ".join(COLUMNS) + " | rescue pairs |",
             "|---" * (len(COLUMNS) + 2) + "|"]
    for n in names:
        lines.append(f"| {n} | " + " | ".join(fmt(results.get(f"{n}_{c}")) for c in COLUMNS)
                     + f" | {fmt(results.get(f'{n}_rescue_pairs'))} |")
    if (label_auroc := results.get("overfit_256_in_sample_label_auroc")) is not None:
        lines += ["", f"Overfit: against the labels it trained on (the answer line is good iff no step is wrong), the "
                  f"value head ranks its 256 solutions at {label_auroc:.3f}; against the answers' correctness at "
                  f"{results['overfit_256_in_sample_auroc']:.3f} (lucky answers: a right answer after a wrong step)."]
    lines += ["", "Within-question AUROC by the wrong solution's error kind (AUROC, pairs):", ""]
    for n in names:
        kinds = results.get(f"{n}_by_error_kind") or {}
        lines.append(f"- {n}: " + ", ".join(f"{k} {v[0]:.3f} ({v[1]})" for k, v in kinds.items()))
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
