"""The data plane the stages share: engine replicas in Ray Data actor pools, sized by the config
(one engine per replica; fractional CPUs on a laptop, GPUs on a cluster), batching, and Parquet
writing. Ray Data restarts a dead replica and retries its batch, so a lost actor costs one batch
of work and no output twice."""

from __future__ import annotations

import logging
import math
import os
from concurrent.futures import ThreadPoolExecutor

import pyarrow as pa

from glore_ray.capacity import request, require
from glore_ray.config import EngineConfig, EnginePoolConfig
from glore_ray.io import exists, output_target
from glore_ray.models.engines import load_model

log = logging.getLogger(__name__)


class Replica:
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


def pool_args(pool: EnginePoolConfig, key: str) -> dict:
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


def in_batches(dataset, rows: int, pool: EnginePoolConfig):
    """`dataset` in blocks of one engine batch: Ray Data hands an actor pool a block per task, so
    fewer blocks than replicas leave replicas idle (a file of questions is one block), and a lost
    replica would cost every batch of the block it held."""
    return dataset.repartition(max(1, math.ceil(rows / pool.batch_size)))


def write_parquet(path: str, rows: list[dict], schema: pa.Schema | None = None) -> None:
    """Rows as one Parquet file (local path or URI), from the driver."""
    import pyarrow.parquet as pq

    filesystem, target = output_target(path)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), target, filesystem=filesystem)


def write_dataset(dataset, path: str, schema: pa.Schema) -> None:
    """`write_parquet`, plus an empty file with the schema when there is no row: Ray Data writes
    nothing then, and the next stage must read an empty dataset, not a missing one."""
    dataset.write_parquet(path)
    if not exists(path):
        write_parquet(f"{path}/empty.parquet", [], schema)


def report_replacements(stage: str, totals: dict, pool: EnginePoolConfig) -> None:
    """Say so when replicas were replaced (a node or a process lost): their batches ran again."""
    if (starts := totals.get("replica_starts", 0)) > pool.replicas:
        log.warning(f"{stage}: {starts - pool.replicas} replica(s) lost and replaced "
                    f"({starts} starts for a pool of {pool.replicas}); Ray Data retried their batches")
