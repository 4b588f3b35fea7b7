"""The pipeline's view across stages: a line per stage event with the time spent and an estimate of
the time left, and `<run>/pipeline.json`, the table of every stage's state and wall time."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from glore_ray.pipeline.runner import Stage

log = logging.getLogger(__name__)


PRIOR_RATES: dict[str | None, tuple[float, float]] = {
    "train_examples": (28.0, 0.009),
    "sampled_solutions": (15.0, 0.015),
    "label_questions": (30.0, 0.13),
    "eval_questions": (20.0, 0.12),
    "reranker_rows": (5.0, 0.001),
    None: (5.0, 0.0),
}
"""(start-up seconds, seconds per unit) of each kind of work, the tiny model's on a 2-core laptop
(the demo's validation run, runs/demo-validation):
the estimate's prior until this run has finished a stage of the kind, whose rate then replaces it."""


def _clock(seconds: float) -> str:
    return f"{int(seconds) // 60}:{int(seconds) % 60:02d}"


class PipelineProgress:
    """One view across stages: a line per stage event with the time spent and an estimate of the time
    left (the stages' work from the config, at the rates this run has measured so far), and
    `<out>/pipeline.json`, the table of every stage's state and wall time."""

    def __init__(self, out: Path, stages: list[Stage]):
        self.path, self.t0 = out / "pipeline.json", time.perf_counter()
        self.stages = {s.name: s for s in stages}
        self.rows = {s.name: {"state": "pending", "wall_s": None} for s in stages}
        self.rates = dict(PRIOR_RATES)

    def _estimate(self, stage: Stage) -> float:
        unit, amount = stage.work or (None, 0.0)
        startup, per_unit = self.rates[unit]
        return startup + per_unit * amount

    def seconds_left(self) -> float:
        """The estimate of the stages not finished yet (the running one as a whole)."""
        return sum(self._estimate(self.stages[n]) for n, r in self.rows.items()
                   if r["state"] in ("pending", "running", "resuming"))

    def update(self, name: str, state: str, wall_s: float | None = None) -> None:
        self.rows[name] = {"state": state, "wall_s": None if wall_s is None else round(wall_s, 1)}
        stage = self.stages[name]
        if state == "done" and stage.work and stage.work[1] > 0:
            startup = self.rates[stage.work[0]][0]
            self.rates[stage.work[0]] = (startup, max(wall_s - startup, 0.0) / stage.work[1])
        index = list(self.rows).index(name) + 1
        elapsed = time.perf_counter() - self.t0
        done = f" in {wall_s:.0f} s" if state == "done" else ""
        log.info(f"== [{index}/{len(self.rows)}] {name}: {state}{done}  "
                 f"(pipeline {_clock(elapsed)}, about {_clock(self.seconds_left())} left)")
        self.path.write_text(json.dumps({"stages": self.rows, "elapsed_s": round(elapsed, 1)}, indent=2) + "\n")

    def table(self) -> str:
        lines = ["| stage | state | wall s |", "|---|---|---|"]
        lines += [f"| {n} | {r['state']} | {'' if r['wall_s'] is None else r['wall_s']} |"
                  for n, r in self.rows.items()]
        return "\n".join(lines)
