"""A long stage's own progress: the replicas or the training workers report to a small counters actor,
and the driver prints a line from it every few seconds (questions done, tokens/s, steps, loss). The
actor also records the stage's metrics, and its totals go into the manifest."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from glore_ray.metrics import StageMetrics

log = logging.getLogger(__name__)
EVERY_S = 10.0

COUNT_METRICS = {"questions": "questions", "samples": "samples", "continuations": "samples",
                 "generated_tokens": "generated_tokens", "replica_starts": "replica_starts"}
"""The replicas' counts that are also metrics (metrics.py); SORM continuations are samples."""

Line = Callable[[dict, dict, float], str]
"""(totals, latest values, seconds since the stage started) -> a progress line."""


def counters_name(out_dir: str) -> str:
    """The name of a stage's counters actor (one per output directory; `ray list actors` shows it)."""
    return f"glore-counters:{out_dir}"


def _counters_class():
    import ray

    @ray.remote(num_cpus=0)
    class StageCounters:
        """Totals the replicas or workers report (questions, tokens, steps), and the latest values
        (loss); read by the driver's progress line and at the end for the manifest."""

        def __init__(self, metrics: StageMetrics) -> None:
            self.totals: Counter = Counter()
            self.latest: dict = {}
            self.metrics = metrics
            self.t0 = time.perf_counter()

        def add(self, counts: dict, latest: dict | None = None) -> None:
            self.totals.update(counts)
            self.latest |= latest or {}
            for key, metric in COUNT_METRICS.items():
                self.metrics.record(metric, counts.get(key, 0))
            for label in ("positive", "negative"):
                self.metrics.record("sorm_steps", counts.get(f"{label}_steps", 0), label=label)
            if "generated_tokens" in counts:
                self.metrics.record("generation_tokens_per_second",
                                    self.totals["generated_tokens"] / (time.perf_counter() - self.t0))

        def snapshot(self) -> tuple[dict, dict]:
            return dict(self.totals), dict(self.latest)

    return StageCounters


@contextmanager
def stage_progress(out_dir: str, stage: str, run: str, line: Line) -> Iterator:
    """The stage's named counters actor, and a line from it every EVERY_S seconds while the stage
    runs and its counts move; the actor is removed when the stage ends (a re-run can reuse the name)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    # On the driver's node: a worker node that is lost mid-stage must not take the counts with it.
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    counters = _counters_class().options(name=counters_name(out_dir), scheduling_strategy=here).remote(
        StageMetrics(stage, run))
    stop, t0 = threading.Event(), time.perf_counter()

    def report() -> None:
        last = None
        while not stop.wait(EVERY_S):
            snapshot = ray.get(counters.snapshot.remote())
            if snapshot != last:  # a line only when something moved
                log.info(line(*snapshot, time.perf_counter() - t0))
                last = snapshot

    thread = threading.Thread(target=report, daemon=True)
    thread.start()
    try:
        yield counters
    finally:
        stop.set()
        thread.join()
        ray.kill(counters)


def generation_line(stage: str, questions: int) -> Line:
    def line(totals: dict, latest: dict, elapsed: float) -> str:
        tokens = totals.get("generated_tokens", 0)
        return (f"  {stage}: {totals.get('questions', 0)} of {questions} questions, {tokens:,} tokens "
                f"({tokens / max(elapsed, 1e-9):,.0f} tok/s), {elapsed:.0f} s")

    return line


def training_line(stage: str, steps: int) -> Line:
    def line(totals: dict, latest: dict, elapsed: float) -> str:
        if "step" not in latest:
            return f"  {stage}: starting the Ray Train workers, {elapsed:.0f} s"
        return (f"  {stage}: step {latest['step']} of {steps}, loss {latest['loss']:.3f}, "
                f"{latest['tokens_per_s']:,.0f} tok/s per worker, {elapsed:.0f} s")

    return line
