"""The Arrow schemas of the stages' datasets, declared explicitly so that blocks whose optional
fields are all null still share one schema."""

from __future__ import annotations

import pyarrow as pa

ROLLOUT_TYPE = pa.struct([("id", pa.string()), ("text", pa.string()), ("steps", pa.list_(pa.string())),
                          ("correct", pa.bool_()), ("n_tokens", pa.int64()), ("finish_reason", pa.string()),
                          ("count", pa.int64()), ("first_wrong", pa.int64()), ("greedy", pa.bool_())])
ROLLOUTS_SCHEMA = pa.schema([("id", pa.string()), ("question", pa.string()), ("steps", pa.list_(pa.string())),
                             ("answer", pa.string()), ("n_samples", pa.int64()), ("step_truth", pa.bool_()),
                             ("rollouts", pa.list_(ROLLOUT_TYPE))])
"""One row per question (`core.rollouts.grade_rollouts`)."""

SFT_SCHEMA = pa.schema([("id", pa.string()), ("question", pa.string()), ("solution", pa.string())])
"""A causal-LM training row: the policy's SFT and expert-iteration rows."""

SORM_SCHEMA = pa.schema([("id", pa.string()), ("problem_id", pa.string()), ("prompt", pa.string()),
                         ("completions", pa.list_(pa.string())), ("labels", pa.list_(pa.bool_())),
                         ("first_wrong", pa.int64()), ("step_truth", pa.bool_()),
                         ("pos_continuation", pa.string()), ("neg_continuation", pa.string())])
"""A step-labelled row in TRL's PRM layout, with the SORM labeller's continuations."""
ORM_SCHEMA = pa.schema([f for f in SORM_SCHEMA if f.name not in ("pos_continuation", "neg_continuation")])
"""The same without continuations: the ORM's and the PRM's rows."""


def weighted_schema(schema: pa.Schema) -> pa.Schema:
    """`schema` with per-step loss weights (`labels.balance`)."""
    return schema.append(pa.field("weights", pa.list_(pa.float64())))


GLOBAL_SCHEMA = pa.schema([("id", pa.string()), ("question", pa.string()), ("draft", pa.string()),
                           ("target", pa.string())])
LOCAL_SCHEMA = pa.schema([("id", pa.string()), ("question", pa.string()), ("draft_steps", pa.list_(pa.string())),
                          ("bad_step", pa.int64()), ("target", pa.string())])
