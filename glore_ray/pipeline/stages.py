"""The data stages on Ray Data: questions -> rollouts -> ORM / SORM labels -> refinement pairs.

Each stage streams Parquet through Ray Data (local paths or s3/gs), runs the engine in an actor
pool sized by the config (one engine per replica; fractional CPUs here, GPUs on a cluster), writes
its dataset and returns its counts (the runner writes the manifest). Ray Data restarts a dead
replica and retries its batch, so a lost actor costs one batch of work and no output twice. The
labelling rules themselves are plain functions in `core/labels.py` and `core/rollouts.py`.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pyarrow as pa

from glore_ray.capacity import request, require
from glore_ray.config import EngineConfig, EnginePoolConfig, GloreConfig, LabelConfig, PairsConfig
from glore_ray.core.problems import Problem, Quarantine, load_problems
from glore_ray.io import absolute, exists, filesystem_for, output_target, parquet_rows
from glore_ray.core.generation import Sampling
from glore_ray.models.engines import load_model
from glore_ray.core.grading import good_steps, scored_steps
from glore_ray.core.labels import (
    SormLabeller,
    balance_weights,
    global_pairs,
    is_heldout,
    local_pair,
    orm_labels,
    row_weights,
    sorm_row,
    step_label_counts,
)
from glore_ray.pipeline.progress import generation_line, stage_progress
from glore_ray.core.prompts import solve_prompt
from glore_ray.core.rollouts import grade_rollouts, question_from_row

log = logging.getLogger(__name__)
QUESTIONS_PER_FILE = 10_000
"""Validated questions per Parquet file: the unit Ray Data reads in parallel."""


class _Replica:
    """One engine in a Ray Data actor pool; reports to the stage's counters actor. Subclasses turn
    a batch into rows in `process`.

    The engine is built, and every batch processed, on one thread of the replica's own. Ray Data
    calls a replica from a thread of its pool, and the vLLM CPU build generates ~20% slower on a
    thread other than the one that built the engine (measured in one process: 8.4 s against 6.9 s
    for the same call). On CPU the thread also sets torch's threads: Ray gives an actor holding a
    fraction of a CPU one thread (OMP_NUM_THREADS=1)."""

    def __init__(self, model: str, engine: EngineConfig, pool: EnginePoolConfig, counters):
        self._engine_thread = ThreadPoolExecutor(1, thread_name_prefix="engine")
        self.engine = self._engine_thread.submit(self._load, model, engine, pool).result()
        self.counters = counters
        # More starts than replicas: a replica was lost (its node, its process) and replaced, and
        # Ray Data retried the batches it held.
        counters.add.remote({"replica_starts": 1})

    @staticmethod
    def _load(model: str, engine: EngineConfig, pool: EnginePoolConfig):
        if threads := pool.threads_per_replica(_node_cpus()):
            import torch

            torch.set_num_threads(threads)
        return load_model(model, "generator", engine)

    def __call__(self, batch: pa.Table) -> pa.Table:
        return self._engine_thread.submit(self.process, batch).result()


def _node_cpus() -> int:
    """The CPUs Ray counts on this process's node: a container's limit, where `os.cpu_count()`
    would give the host's cores."""
    import ray

    if not ray.is_initialized():
        return os.cpu_count() or 1
    node = ray.get_runtime_context().get_node_id()
    return int(next(n["Resources"].get("CPU", 1) for n in ray.nodes() if n["NodeID"] == node))


class RolloutSampler(_Replica):
    def __init__(self, model: str, engine: EngineConfig, pool: EnginePoolConfig, counters, sampling: Sampling,
                 greedy: bool):
        super().__init__(model, engine, pool, counters)
        self.sampling = sampling
        self.greedy = dataclasses.replace(self.sampling, n=1, temperature=0.0) if greedy else None

    def process(self, batch: pa.Table) -> pa.Table:
        problems = [Problem.from_row(row) for row in batch.to_pylist()]
        prompts = [solve_prompt(p.question) for p in problems]
        # The greedy solutions ride in the samples' engine call: a call ends with its longest
        # sequence, and a second call of one sequence per question would run at a fraction of the
        # engine's batch.
        n = len(prompts)
        if self.greedy:
            generations = self.engine.generate(prompts * 2, [self.sampling] * n + [self.greedy] * n)
            samples, greedy = generations[:n], generations[n:]
        else:
            generations = samples = self.engine.generate(prompts, self.sampling)
            greedy = [None] * n
        rows = [grade_rollouts(p, g, d) for p, g, d in zip(problems, samples, greedy, strict=True)]
        generated = [c for g in generations for c in g.completions]
        self.counters.add.remote({"questions": len(rows), "samples": len(generated),
                                  "generated_tokens": sum(c.n_tokens for c in generated)})
        return pa.Table.from_pylist(rows, schema=ROLLOUTS_SCHEMA)


ROLLOUT_TYPE = pa.struct([("id", pa.string()), ("text", pa.string()), ("steps", pa.list_(pa.string())),
                          ("correct", pa.bool_()), ("n_tokens", pa.int64()), ("finish_reason", pa.string()),
                          ("count", pa.int64()), ("first_wrong", pa.int64()), ("greedy", pa.bool_())])
ROLLOUTS_SCHEMA = pa.schema([("id", pa.string()), ("question", pa.string()), ("steps", pa.list_(pa.string())),
                             ("answer", pa.string()), ("n_samples", pa.int64()), ("step_truth", pa.bool_()),
                             ("rollouts", pa.list_(ROLLOUT_TYPE))])
"""One row per question (rollouts.grade_rollouts); explicit, so blocks whose optional fields are
all null still share one schema."""


class SormLabelBatch(_Replica):
    def __init__(self, model: str, engine: EngineConfig, pool: EnginePoolConfig, counters, labels: LabelConfig,
                 max_tokens: int):
        super().__init__(model, engine, pool, counters)
        self.labels, self.max_tokens = labels, max_tokens

    def process(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        questions = [question_from_row(row) for row in rows]
        labels = self.labels
        labeller = SormLabeller(self.engine, labels.mode, labels.k, labels.temperature, self.max_tokens, labels.seed,
                                labels.round_size)
        out = [sorm | {"step_truth": row["step_truth"]}
               for row, question, labelled in zip(rows, questions, labeller.label(questions), strict=True)
               for lr in labelled if (sorm := sorm_row(question, lr)) is not None]
        steps = [label for row in out for label in row["labels"]]
        self.counters.add.remote({"questions": len(rows), **dataclasses.asdict(labeller.stats),
                                  "positive_steps": sum(steps), "negative_steps": len(steps) - sum(steps)})
        return pa.Table.from_pylist(out, schema=SORM_SCHEMA)


SORM_SCHEMA = pa.schema([("id", pa.string()), ("problem_id", pa.string()), ("prompt", pa.string()),
                         ("completions", pa.list_(pa.string())), ("labels", pa.list_(pa.bool_())),
                         ("first_wrong", pa.int64()), ("step_truth", pa.bool_()),
                         ("pos_continuation", pa.string()), ("neg_continuation", pa.string())])


def _pool_args(pool: EnginePoolConfig, key: str) -> dict:
    """Ray Data's options for `pool` (the config section `key`), once some node can hold a replica."""
    import ray.data

    require(key, request(pool.cpus_per_replica, pool.gpus_per_replica, pool.accelerator_type, pool.resources))
    args = {"compute": ray.data.ActorPoolStrategy(size=pool.replicas), "num_cpus": pool.cpus_per_replica,
            "batch_size": pool.batch_size, "batch_format": "pyarrow"}
    if pool.gpus_per_replica:
        args["num_gpus"] = pool.gpus_per_replica
    if pool.accelerator_type:
        args["accelerator_type"] = pool.accelerator_type
    if pool.resources:
        args["resources"] = dict(pool.resources)
    return args


def _in_batches(dataset, rows: int, pool: EnginePoolConfig):
    """`dataset` in blocks of one engine batch: Ray Data hands an actor pool a block per task, so
    fewer blocks than replicas leave replicas idle (a file of questions is one block), and a lost
    replica would cost every batch of the block it held."""
    return dataset.repartition(max(1, math.ceil(rows / pool.batch_size)))


def _write_parquet(path: str, rows: list[dict], schema: pa.Schema | None = None) -> None:
    import pyarrow.parquet as pq

    filesystem, target = output_target(path)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), target, filesystem=filesystem)


def write_dataset(dataset, path: str, schema: pa.Schema) -> None:
    """`write_parquet`, plus an empty file with the schema when there is no row: Ray Data writes
    nothing then, and the next stage must read an empty dataset, not a missing one."""
    dataset.write_parquet(path)
    if not exists(path):
        _write_parquet(f"{path}/empty.parquet", [], schema)


def prepare_questions(cfg: GloreConfig, source: str, out_dir: str, first: int = 0) -> dict:
    """Validate questions `first` .. `first + rollouts.max_questions` of a GSM8K/SVAMP/problems file
    into Parquet under `out_dir/questions`, streaming (QUESTIONS_PER_FILE per file); bad records
    go to `out_dir/quarantine.jsonl`."""
    quarantine = Quarantine()
    problems = load_problems(source, quarantine=quarantine, keep_calculator=cfg.data.keep_calculator)
    problems = itertools.islice(problems, first, first + cfg.rollouts.max_questions if cfg.rollouts.max_questions
                                else None)
    count, part = 0, 0
    while chunk := [p.to_row() for p in itertools.islice(problems, QUESTIONS_PER_FILE)]:
        _write_parquet(f"{out_dir}/questions/part-{part:05d}.parquet", chunk)
        count, part = count + len(chunk), part + 1
    if quarantine:
        quarantine.write_jsonl(f"{out_dir}/quarantine.jsonl")
        log.info(f"{quarantine.summary()} -> {out_dir}/quarantine.jsonl")
    if count == 0:
        raise ValueError(f"{source}: no valid questions (quarantined: {len(quarantine)})")
    return {"questions": count, "quarantined": len(quarantine)}


def rollout_sampling(cfg: GloreConfig) -> Sampling:
    """The K samples per question of the rollout stage (its greedy solution: n 1 at temperature 0)."""
    return Sampling(n=cfg.rollouts.k, temperature=cfg.rollouts.temperature, top_p=cfg.sampling.top_p,
                    max_tokens=cfg.sampling.max_tokens, seed=cfg.sampling.seed)


def run_rollouts(cfg: GloreConfig, stage: str, questions: str, policy: str, out_dir: str, first: int = 0) -> dict:
    """K graded, de-duplicated samples per question, from question `first` on -> `out_dir/data`
    (one row per question)."""
    import ray.data

    out_dir = absolute(out_dir)
    prepared = prepare_questions(cfg, questions, out_dir, first)
    sampling = rollout_sampling(cfg)
    with stage_progress(out_dir, stage, cfg.run_name, generation_line(stage, prepared["questions"])) as counters:
        questions = _in_batches(ray.data.read_parquet(f"{out_dir}/questions"), prepared["questions"], cfg.rollouts.pool)
        write_dataset(questions.map_batches(
            RolloutSampler, fn_constructor_kwargs={"model": absolute(policy), "engine": cfg.engine,
                                                   "pool": cfg.rollouts.pool, "counters": counters, "sampling": sampling,
                                                   "greedy": cfg.rollouts.greedy},
            **_pool_args(cfg.rollouts.pool, "rollouts.pool")), f"{out_dir}/data", ROLLOUTS_SCHEMA)
        totals, _ = ray.get(counters.snapshot.remote())
    report_replacements(stage, totals, cfg.rollouts.pool)
    counts = _rollout_counts(f"{out_dir}/data") | {"quarantined": prepared["quarantined"],
                                                   "generated_tokens": totals.get("generated_tokens", 0),
                                                   "replica_starts": totals.get("replica_starts", 0)}
    if counts["questions"] != prepared["questions"]:
        raise RuntimeError(f"rollouts: {counts['questions']} questions written for {prepared['questions']} read")
    return counts


def report_replacements(stage: str, totals: dict, pool: EnginePoolConfig) -> None:
    """Say so when replicas were replaced (a node or a process lost): their batches ran again."""
    if (starts := totals.get("replica_starts", 0)) > pool.replicas:
        log.warning(f"{stage}: {starts - pool.replicas} replica(s) lost and replaced "
                    f"({starts} starts for a pool of {pool.replicas}); Ray Data retried their batches")


def _rollout_counts(path: str) -> dict:
    counts: Counter = Counter()
    ids = set()
    for row in parquet_rows(path, ["id", "n_samples", "rollouts"]):
        if row["id"] in ids:
            raise RuntimeError(f"rollouts: question {row['id']} written twice")
        ids.add(row["id"])
        counts["questions"] += 1
        counts["samples"] += row["n_samples"]
        counts["unique"] += len(row["rollouts"])
        counts["correct_samples"] += sum(r["count"] for r in row["rollouts"] if r["correct"])
        counts["correct_unique"] += sum(r["correct"] for r in row["rollouts"])
    return dict(counts)


def write_expert_iteration_rows(rollouts: str, out: str, seed: int) -> dict:
    """An expert-iteration round's SFT rows: for every sampled question its gold solution and each
    correct unique rollout, shuffled (seeded): rows in file order would put a question's solutions
    in one batch, and a round reading only its first steps x batch rows would see only some."""
    import ray.data

    def rows(batch: pa.Table) -> pa.Table:
        out_rows = []
        for row in batch.to_pylist():
            problem = Problem.from_row(row)
            out_rows.append({"id": problem.id, "question": problem.question, "solution": problem.solution()})
            out_rows += [{"id": r["id"], "question": problem.question, "solution": r["text"]}
                         for r in row["rollouts"] if r["correct"]]
        return pa.Table.from_pylist(out_rows, schema=SFT_SCHEMA)

    source = ray.data.read_parquet(f"{absolute(rollouts)}/data")
    write_dataset(source.map_batches(rows, batch_format="pyarrow").random_shuffle(seed=seed), absolute(out), SFT_SCHEMA)
    n_rows, questions = ray.data.read_parquet(absolute(out)).count(), source.count()
    return {"rows": n_rows, "gold_rows": questions, "correct_samples": n_rows - questions}


SFT_SCHEMA = pa.schema([("id", pa.string()), ("question", pa.string()), ("solution", pa.string())])


def _orm_rows(batch: pa.Table) -> pa.Table:
    out = []
    for row in batch.to_pylist():
        for r in row["rollouts"]:
            if completions := scored_steps(r["text"]):
                out.append({"id": r["id"], "problem_id": row["id"], "prompt": row["question"],
                            "completions": completions, "labels": orm_labels(len(completions), r["correct"]),
                            "first_wrong": r["first_wrong"], "step_truth": row["step_truth"]})
    return pa.Table.from_pylist(out, schema=ORM_SCHEMA)


ORM_SCHEMA = pa.schema([f for f in SORM_SCHEMA if f.name not in ("pos_continuation", "neg_continuation")])


def _prm_rows(batch: pa.Table) -> pa.Table:
    """The ORM's rows with the exact checker's labels: a step is good iff it comes before the first
    wrong one (the answer line iff the solution has no wrong step)."""
    rows = _orm_rows(batch).to_pylist()
    for row in rows:
        row["labels"] = good_steps(row["first_wrong"], len(row["completions"]))
    return pa.Table.from_pylist([r for r in rows if r["step_truth"]], schema=ORM_SCHEMA)


def run_labels(cfg: GloreConfig, kind: str, rollouts: str, policy: str | None, out_dir: str) -> dict:
    """ORM, SORM or PRM step labels in TRL's PRM layout -> `out_dir/data`, every row kept. The
    questions `heldout_share` picks are left out of every reward model's rows; the ORM writes
    theirs to `out_dir/heldout` (what the reranker is fitted on). With `labels.balance`, the SORM's
    and the PRM's rows carry per-step loss `weights` (labels.balance_weights), computed over the
    whole set from the labels in `out_dir/unweighted`."""
    import ray
    import ray.data

    out_dir = absolute(out_dir)
    share = heldout_share(cfg)
    source = ray.data.read_parquet(f"{absolute(rollouts)}/data")
    kept = source.filter(lambda row: not is_heldout(row["id"], share)) if share else source
    weighted = kind in ("sorm", "prm") and cfg.labels.balance
    target = f"{out_dir}/unweighted" if weighted else f"{out_dir}/data"
    totals: dict = {}
    if kind == "orm":
        write_dataset(kept.map_batches(_orm_rows, batch_format="pyarrow"), target, ORM_SCHEMA)
        if share:
            heldout = source.filter(lambda row: is_heldout(row["id"], share))
            write_dataset(heldout.map_batches(_orm_rows, batch_format="pyarrow"), f"{out_dir}/heldout", ORM_SCHEMA)
    elif kind == "prm":
        write_dataset(kept.map_batches(_prm_rows, batch_format="pyarrow"), target, ORM_SCHEMA)
    elif kind == "sorm":
        if policy is None:
            raise ValueError("SORM labels need the policy (--model) to sample continuations")
        n_questions = kept.count()
        line = generation_line(f"sorm_labels ({cfg.labels.mode})", n_questions)
        with stage_progress(out_dir, "sorm_labels", cfg.run_name, line) as counters:
            write_dataset(_in_batches(kept, n_questions, cfg.labels.pool).map_batches(
                SormLabelBatch, fn_constructor_kwargs={"model": absolute(policy), "engine": cfg.engine,
                                                       "pool": cfg.labels.pool, "counters": counters, "labels": cfg.labels,
                                                       "max_tokens": cfg.sampling.max_tokens},
                **_pool_args(cfg.labels.pool, "labels.pool")), target, SORM_SCHEMA)
            totals, _ = ray.get(counters.snapshot.remote())
        report_replacements("sorm_labels", totals, cfg.labels.pool)
    else:
        raise ValueError(f"unknown label kind {kind!r} (orm, sorm or prm)")
    schema = SORM_SCHEMA if kind == "sorm" else ORM_SCHEMA
    if weighted:
        _write_weighted(target, f"{out_dir}/data", schema)
    counts = label_counts(f"{out_dir}/data") | {k: v for k, v in totals.items() if k != "questions"}
    if kind == "orm" and share:
        counts["heldout_rows"] = label_counts(f"{out_dir}/heldout").get("rows", 0)
    return counts


def heldout_share(cfg: GloreConfig) -> float:
    """The share of the rollouts' questions no reward model trains on: the reranker's fitting set
    (none without the likelihood reranker)."""
    return cfg.reranker.heldout_share if cfg.reranker.likelihood else 0.0


def weighted_schema(schema: pa.Schema) -> pa.Schema:
    return schema.append(pa.field("weights", pa.list_(pa.float64())))


def _write_weighted(unweighted: str, out: str, schema: pa.Schema) -> None:
    """Every row of `unweighted` with its per-step loss weights (labels.balance_weights over the
    whole set): the driver holds one count per (step index, label), the rows stream through Ray Data."""
    import ray
    import ray.data

    counts: Counter = Counter()
    for batch in ray.data.read_parquet(unweighted).select_columns(["labels"]).iter_batches(batch_format="pyarrow"):
        counts += step_label_counts(batch.column("labels").to_pylist())
    weights = balance_weights(counts)

    def weigh(batch: pa.Table) -> pa.Table:
        rows = [row | {"weights": row_weights(row["labels"], weights)} for row in batch.to_pylist()]
        return pa.Table.from_pylist(rows, schema=weighted_schema(schema))

    write_dataset(ray.data.read_parquet(unweighted).map_batches(weigh, batch_format="pyarrow"), out,
                  weighted_schema(schema))


def label_counts(path: str) -> dict:
    """Rows, labels and positives, per step index too, and, where exact step truth exists (the
    model organism), the labels' accuracy against it (a step is good iff before the first wrong one)."""
    c: Counter = Counter()
    for row in parquet_rows(path, ["labels", "first_wrong", "step_truth"]):
        c["rows"] += 1
        truth = good_steps(row["first_wrong"], len(row["labels"])) if row["step_truth"] else None
        for i, label in enumerate(row["labels"]):
            c["labels"] += 1
            c["positives"] += label
            c[f"positives_at_{i}"] += label
            c[f"negatives_at_{i}"] += not label
            if truth is not None:
                good = truth[i]
                c["checked"] += 1
                c["agree"] += label == good
                c["true_neg"] += (not label) and (not good)
                c["pred_neg"] += not label
                c["actual_neg"] += not good
    out = dict(c)
    if c["checked"]:
        out["step_accuracy"] = round(c["agree"] / c["checked"], 4)
        out["negative_precision"] = round(c["true_neg"] / c["pred_neg"], 4) if c["pred_neg"] else None
        out["negative_recall"] = round(c["true_neg"] / c["actual_neg"], 4) if c["actual_neg"] else None
        # Truly bad steps labelled good: what a loose consistency check or lucky continuation costs.
        out["bad_labelled_good"] = round(1 - c["true_neg"] / c["actual_neg"], 4) if c["actual_neg"] else None
    return out


def run_pairs(cfg: PairsConfig, rollouts: str, sorm_rows: str, out_dir: str) -> dict:
    """Global pairs from the rollouts (and reference targets, `cfg.reference_targets`), local pairs
    from labelled SORM rows' continuations; and each kind's identity pairs (`cfg.identity_share`)."""
    import ray.data

    out_dir = absolute(out_dir)

    def global_rows(batch: pa.Table) -> pa.Table:
        rows = [pair for row in batch.to_pylist()
                for pair in global_pairs(question_from_row(row), cfg.identity_share, cfg.reference_targets)]
        return pa.Table.from_pylist(rows, schema=GLOBAL_SCHEMA)

    def local_rows(batch: pa.Table) -> pa.Table:
        rows = [pair for row in batch.to_pylist() if (pair := local_pair(row, cfg.identity_share)) is not None]
        return pa.Table.from_pylist(rows, schema=LOCAL_SCHEMA)

    write_dataset(ray.data.read_parquet(f"{absolute(rollouts)}/data").map_batches(global_rows, batch_format="pyarrow"),
                  f"{out_dir}/global", GLOBAL_SCHEMA)
    write_dataset(ray.data.read_parquet(absolute(sorm_rows)).map_batches(local_rows, batch_format="pyarrow"),
                  f"{out_dir}/local", LOCAL_SCHEMA)
    # Each kind's pairs by the variant their id ends with (`/global`, `/global-identity`, ...), one read each.
    counts = {}
    for kind in ("global", "local"):
        ends = Counter(pair_id.rsplit("/", 1)[1] for batch in ray.data.read_parquet(f"{out_dir}/{kind}", columns=["id"])
                       .iter_batches(batch_format="pyarrow") for pair_id in batch.column("id").to_pylist())
        counts[f"{kind}_pairs"] = sum(ends.values())
        for variant in ("identity", "reference") if kind == "global" else ("identity",):
            counts[f"{kind}_{variant}_pairs"] = ends[f"{kind}-{variant}"]
    return counts


GLOBAL_SCHEMA = pa.schema([("id", pa.string()), ("question", pa.string()), ("draft", pa.string()),
                           ("target", pa.string())])
LOCAL_SCHEMA = pa.schema([("id", pa.string()), ("question", pa.string()), ("draft_steps", pa.list_(pa.string())),
                          ("bad_step", pa.int64()), ("target", pa.string())])


def fit_reranker_stage(cfg: GloreConfig, orm_rows: str, orm: str, policy: str, out_dir: str) -> dict:
    """The likelihood reranker (`reward_models.LikelihoodReranker`): its three weights fitted
    (`reranker.objective`) on the first `reranker.fit_rows` held-out ORM rows (each a solution and
    its correctness, at the answer line; questions no reward model trained on), written with its
    ORM's and policy's folders as `out_dir/model/reranker.json`. Reports each ranker's
    within-question AUROC on those rows."""
    import json
    from pathlib import Path

    import pyarrow.dataset as ds

    from glore_ray.core.report import within_question_auroc
    from glore_ray.models.scorers import (
        RERANKER_FILE,
        PolicyLikelihood,
        fit_logistic,
        fit_within_question,
        load_scorer,
        logit,
    )

    filesystem, root = filesystem_for(orm_rows)
    rows = ds.dataset(root, filesystem=filesystem, format="parquet").head(
        cfg.reranker.fit_rows, columns=["problem_id", "prompt", "completions", "labels"]).to_pylist()
    if not rows:
        raise ValueError(f"{orm_rows}: no held-out ORM rows to fit the reranker on "
                         "(raise reranker.heldout_share or rollouts.max_questions)")
    questions, steps = [r["prompt"] for r in rows], [r["completions"] for r in rows]
    correct = [r["labels"][-1] for r in rows]
    orm_values = [logit(v[-1]) for v in load_scorer(orm).score(questions, steps)]
    likelihood = [lp[-1] for lp in PolicyLikelihood(policy).mean_logprobs(questions, steps)]
    features = list(zip(orm_values, likelihood))
    weights = (fit_within_question(features, [r["problem_id"] for r in rows], correct)
               if cfg.reranker.objective == "within_question" else fit_logistic(features, correct))
    combined = [weights[0] * o + weights[1] * lp + weights[2] for o, lp in zip(orm_values, likelihood)]

    def ranking(scores: list[float]) -> float | None:
        groups: dict[str, list[tuple[float, bool]]] = {}
        for row, score, ok in zip(rows, scores, correct, strict=True):
            groups.setdefault(row["problem_id"], []).append((score, ok))
        auroc, _ = within_question_auroc(groups.values())
        return None if auroc is None else round(auroc, 4)

    model = Path(out_dir) / "model"
    model.mkdir(parents=True, exist_ok=True)
    (model / RERANKER_FILE).write_text(json.dumps({"orm": absolute(orm), "policy": absolute(policy), "weights": weights},
                                                  indent=2) + "\n")
    counts = {"rows": len(rows), "weights": [round(w, 4) for w in weights],
              "orm_within_question_auroc": ranking(orm_values),
              "likelihood_within_question_auroc": ranking(likelihood),
              "reranker_within_question_auroc": ranking(combined)}
    return counts
