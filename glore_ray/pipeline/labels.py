"""The label stages on Ray Data: ORM, SORM and PRM step labels of the rollouts, in TRL's PRM layout
(`prompt`, `completions` = the steps, `labels`), every row kept.

The three kinds differ only in their labels: the ORM's repeat the outcome, the PRM's are the exact
checker's (the model organism), the SORM's come from policy continuations of each step prefix
(`core.labels.SormLabeller`, on an engine pool). The questions `heldout_share` picks are left out of
every reward model's rows; the ORM writes theirs to `heldout/` (what the reranker is fitted on).
With balancing, the SORM's and the PRM's rows carry per-step loss `weights`
(`core.labels.balance_weights`), computed over the whole set from the labels in `unweighted/`.
"""

from __future__ import annotations

import dataclasses
from collections import Counter

import pyarrow as pa

from glore_ray.config import EngineConfig, EnginePoolConfig, LabelConfig
from glore_ray.core.grading import good_steps, scored_steps
from glore_ray.core.labels import (
    SormLabeller,
    balance_weights,
    is_heldout,
    orm_labels,
    row_weights,
    sorm_row,
    step_label_counts,
)
from glore_ray.core.rollouts import question_from_row
from glore_ray.io import absolute, parquet_rows
from glore_ray.layout import DATA, HELDOUT, UNWEIGHTED, output
from glore_ray.pipeline.progress import generation_line, stage_progress
from glore_ray.pipeline.ray_data import Replica, in_batches, pool_args, report_replacements, write_dataset
from glore_ray.pipeline.runner import StageContext
from glore_ray.pipeline.schemas import ORM_SCHEMA, SORM_SCHEMA, weighted_schema


class SormLabelBatch(Replica):
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


def orm_rows(batch: pa.Table) -> pa.Table:
    """Every rollout with steps as a row whose labels repeat its outcome."""
    out = []
    for row in batch.to_pylist():
        for r in row["rollouts"]:
            if completions := scored_steps(r["text"]):
                out.append({"id": r["id"], "problem_id": row["id"], "prompt": row["question"],
                            "completions": completions, "labels": orm_labels(len(completions), r["correct"]),
                            "first_wrong": r["first_wrong"], "step_truth": row["step_truth"]})
    return pa.Table.from_pylist(out, schema=ORM_SCHEMA)


def prm_rows(batch: pa.Table) -> pa.Table:
    """The ORM's rows with the exact checker's labels: a step is good iff it comes before the first
    wrong one (the answer line iff the solution has no wrong step)."""
    rows = orm_rows(batch).to_pylist()
    for row in rows:
        row["labels"] = good_steps(row["first_wrong"], len(row["completions"]))
    return pa.Table.from_pylist([r for r in rows if r["step_truth"]], schema=ORM_SCHEMA)


def _rollouts(ctx: StageContext, heldout_share: float, heldout: bool = False):
    """The rollouts the reward models train on (or, with `heldout`, the ones none trains on)."""
    import ray.data

    source = ray.data.read_parquet(absolute(ctx.inputs["rollouts"]))
    if not heldout_share:
        return source
    return source.filter(lambda row: is_heldout(row["id"], heldout_share) == heldout)


def run_orm_labels(ctx: StageContext, heldout_share: float) -> dict:
    out_dir = absolute(ctx.dir)
    write_dataset(_rollouts(ctx, heldout_share).map_batches(orm_rows, batch_format="pyarrow"), output(out_dir, DATA),
                  ORM_SCHEMA)
    counts = label_counts(output(out_dir, DATA))
    if heldout_share:
        write_dataset(_rollouts(ctx, heldout_share, heldout=True).map_batches(orm_rows, batch_format="pyarrow"),
                      output(out_dir, HELDOUT), ORM_SCHEMA)
        counts["heldout_rows"] = label_counts(output(out_dir, HELDOUT)).get("rows", 0)
    return counts


def run_prm_labels(ctx: StageContext, heldout_share: float, balance: bool) -> dict:
    out_dir = absolute(ctx.dir)
    target = output(out_dir, UNWEIGHTED) if balance else output(out_dir, DATA)
    write_dataset(_rollouts(ctx, heldout_share).map_batches(prm_rows, batch_format="pyarrow"), target, ORM_SCHEMA)
    if balance:
        _write_weighted(target, output(out_dir, DATA), ORM_SCHEMA)
    return label_counts(output(out_dir, DATA))


def run_sorm_labels(ctx: StageContext, heldout_share: float, labels: LabelConfig, engine: EngineConfig,
                    max_tokens: int) -> dict:
    import ray

    out_dir = absolute(ctx.dir)
    target = output(out_dir, UNWEIGHTED) if labels.balance else output(out_dir, DATA)
    kept = _rollouts(ctx, heldout_share)
    n_questions = sum(not is_heldout(row["id"], heldout_share) for row in parquet_rows(ctx.inputs["rollouts"], ["id"]))
    line = generation_line(f"{ctx.name} ({labels.mode})", n_questions)
    with stage_progress(out_dir, ctx.name, ctx.run_name, line) as counters:
        labeller = {"model": absolute(ctx.inputs["policy"]), "engine": engine, "pool": labels.pool,
                    "counters": counters, "labels": labels, "max_tokens": max_tokens}
        write_dataset(in_batches(kept, n_questions, labels.pool).map_batches(
            SormLabelBatch, fn_constructor_kwargs=labeller, **pool_args(labels.pool, "labels.pool")),
            target, SORM_SCHEMA)
        totals, _ = ray.get(counters.snapshot.remote())
    report_replacements(ctx.name, totals, labels.pool)
    if labels.balance:
        _write_weighted(target, output(out_dir, DATA), SORM_SCHEMA)
    return label_counts(output(out_dir, DATA)) | {k: v for k, v in totals.items() if k != "questions"}


LABELLERS = {"orm": run_orm_labels, "sorm": run_sorm_labels, "prm": run_prm_labels}
"""Each label kind's stage function."""


def _write_weighted(unweighted: str, out: str, schema: pa.Schema) -> None:
    """Every row of `unweighted` with its per-step loss weights (labels.balance_weights over the
    whole set): the driver counts the labels (one count per step index and label, the labels column
    streamed in batches), the rows stream through Ray Data."""
    import ray.data

    weights = balance_weights(step_label_counts(row["labels"] for row in parquet_rows(unweighted, ["labels"])))

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
