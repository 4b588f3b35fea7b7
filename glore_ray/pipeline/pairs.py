"""The refinement-pairs stage on Ray Data: global pairs from the rollouts, local pairs from the
labelled SORM rows' continuations (`core.labels`)."""

from __future__ import annotations

from collections import Counter

import pyarrow as pa

from glore_ray.config import PairsConfig
from glore_ray.core.pairs import global_pairs, local_pair
from glore_ray.core.rollouts import question_from_row
from glore_ray.io import absolute, parquet_rows
from glore_ray.layout import GLOBAL, LOCAL, output
from glore_ray.pipeline.ray_data import write_dataset
from glore_ray.pipeline.runner import StageContext
from glore_ray.pipeline.schemas import GLOBAL_SCHEMA, LOCAL_SCHEMA


def run_pairs(ctx: StageContext, pairs: PairsConfig) -> dict:
    """Global pairs from the rollouts (and reference targets, `pairs.reference_targets`) -> `global/`,
    local pairs from the SORM rows -> `local/`; and each kind's identity pairs (`pairs.identity_share`)."""
    import ray.data

    out_dir = absolute(ctx.dir)

    def global_rows(batch: pa.Table) -> pa.Table:
        rows = [pair for row in batch.to_pylist()
                for pair in global_pairs(question_from_row(row), pairs.identity_share, pairs.reference_targets)]
        return pa.Table.from_pylist(rows, schema=GLOBAL_SCHEMA)

    def local_rows(batch: pa.Table) -> pa.Table:
        rows = [pair for row in batch.to_pylist() if (pair := local_pair(row, pairs.identity_share)) is not None]
        return pa.Table.from_pylist(rows, schema=LOCAL_SCHEMA)

    write_dataset(ray.data.read_parquet(absolute(ctx.inputs["rollouts"])).map_batches(global_rows, batch_format="pyarrow"),
                  output(out_dir, GLOBAL), GLOBAL_SCHEMA)
    write_dataset(ray.data.read_parquet(absolute(ctx.inputs["sorm"])).map_batches(local_rows, batch_format="pyarrow"),
                  output(out_dir, LOCAL), LOCAL_SCHEMA)
    # Each kind's pairs by the variant their id ends with (`/global`, `/global-identity`, ...), read here.
    counts = {}
    for kind in (GLOBAL, LOCAL):
        ends = Counter(row["id"].rsplit("/", 1)[1] for row in parquet_rows(output(out_dir, kind), ["id"]))
        counts[f"{kind}_pairs"] = sum(ends.values())
        for variant in ("identity", "reference") if kind == "global" else ("identity",):
            counts[f"{kind}_{variant}_pairs"] = ends[f"{kind}-{variant}"]
    return counts
