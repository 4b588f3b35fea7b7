"""Ray in this project's tests: temp dirs inside the test's tmp path, and Ray Data actor pools that
leave a CPU for the read tasks (else the pipeline hangs silently)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from glore_ray.config import OrganismConfig
from glore_ray.core.grading import is_correct
from glore_ray.core.organism import generate
from glore_ray.core.problems import Problem
from glore_ray.io import write_jsonl

pytestmark = pytest.mark.cluster


class GoldGrader:
    """An actor that grades gold solutions, as the rollout stage's engine actors will grade samples."""

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = [{k: batch[k][i] for k in batch} for i in range(len(batch["id"]))]
        problems = [Problem.from_row(r) for r in rows]
        return {"id": batch["id"], "correct": np.array([is_correct(p.solution(), p.gold) for p in problems])}


def test_the_default_engine_pools_leave_a_cpu_for_ray_datas_read_tasks(ray_local, tmp_path: Path) -> None:
    """An actor pool holding every CPU starves Ray Data's read tasks and the stage hangs silently:
    the embedded default's pools leave one free on a 2-CPU machine, and stream every row through."""
    import ray

    from glore_ray.config import GloreConfig
    from glore_ray.pipeline.ray_data import pool_args

    assert (ray_local / "session_latest").exists()  # Ray's files stay in pytest's tmp tree
    cpus = ray.cluster_resources()["CPU"]
    assert cpus == 2
    for stage in ("rollouts", "labels"):
        pool = getattr(GloreConfig(), stage).pool
        assert pool.replicas * pool.cpus_per_replica <= cpus - 1, stage

    path = tmp_path / "problems.jsonl"
    problems = list(generate(OrganismConfig(), "test", 200))
    write_jsonl(str(path), (p.to_row() for p in problems))
    args = pool_args(GloreConfig().rollouts.pool, "rollouts.pool") | {"batch_format": "numpy"}
    graded = ray.data.read_json(str(path)).map_batches(GoldGrader, **args).take_all()
    assert sorted(r["id"] for r in graded) == sorted(p.id for p in problems)
    assert all(r["correct"] for r in graded)
