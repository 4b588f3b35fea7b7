"""Ray in this project's tests: explicit auth mode, temp dirs inside the test's tmp path, and Ray
Data actor pools that leave a CPU for the read tasks (else the pipeline hangs silently)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from glore_ray.config import OrganismConfig
from glore_ray.core.problems import Problem
from glore_ray.io import write_jsonl
from glore_ray.core.grading import is_correct
from glore_ray.core.organism import generate


class GoldGrader:
    """An actor that grades gold solutions, as the rollout stage's engine actors will grade samples."""

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = [{k: batch[k][i] for k in batch} for i in range(len(batch["id"]))]
        problems = [Problem.from_row(r) for r in rows]
        return {"id": batch["id"], "correct": np.array([is_correct(p.solution(), p.gold) for p in problems])}


def test_ray_data_streams_problems_through_a_fractional_actor_pool(ray_local, tmp_path: Path) -> None:
    import ray

    assert os.environ["RAY_AUTH_MODE"] == "disabled"
    assert (ray_local / "session_latest").exists()  # Ray's files stay in pytest's tmp tree

    path = tmp_path / "problems.jsonl"
    problems = list(generate(OrganismConfig(), "test", 200))
    write_jsonl(str(path), (p.to_row() for p in problems))
    graded = (ray.data.read_json(str(path))
              .map_batches(GoldGrader, batch_size=32, num_cpus=0.5, compute=ray.data.ActorPoolStrategy(size=2))
              .take_all())
    assert sorted(r["id"] for r in graded) == sorted(p.id for p in problems)
    assert all(r["correct"] for r in graded)
