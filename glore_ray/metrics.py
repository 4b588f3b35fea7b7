"""The project's metrics on Ray's metrics endpoint, and so in the dashboard's Grafana panels
(`cluster/grafana/glore.json`).

Every metric is tagged with `stage` (a pipeline stage's name, or `serve`) and `run` (the config's
`run_name`); Prometheus sees them as `ray_glore_<name>` (`_total` on counters). Each node's metrics
agent serves them on its `--metrics-export-port`. Recording outside a Ray process does nothing, so
the code that records stays callable without a cluster.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Literal

TAG_KEYS = ("stage", "run")
LATENCY_BOUNDARIES_S = [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0]


@dataclass(frozen=True)
class MetricSpec:
    kind: Literal["counter", "gauge", "histogram"]
    description: str
    extra_tags: tuple[str, ...] = ()


METRICS = {
    "questions": MetricSpec("counter", "Questions a stage has finished"),
    "samples": MetricSpec("counter", "Completions generated (rollouts, SORM continuations, evaluation samples)"),
    "generated_tokens": MetricSpec("counter", "Tokens generated"),
    "replica_starts": MetricSpec("counter", "Engine replicas a data stage started (more than its pool: lost and replaced)"),
    "generation_tokens_per_second": MetricSpec("gauge", "A data stage's generated tokens per second since it began"),
    "sorm_steps": MetricSpec("counter", "SORM step labels by value", ("label",)),
    "train_steps": MetricSpec("counter", "Optimizer steps done (rank 0)"),
    "train_loss": MetricSpec("gauge", "Mean training loss over the last logging window (rank 0)"),
    "train_tokens_per_second": MetricSpec("gauge", "Training tokens per second of one worker (rank 0)"),
    "chosen_candidates": MetricSpec("counter", "Candidates the ensemble's ORM rerank chose", ("candidate",)),
    "serve_requests": MetricSpec("counter", "Requests answered, by HTTP status and model (glore: the ensemble, "
                                            "glore-policy: the draft alone)", ("status", "model")),
    "serve_latency_seconds": MetricSpec("histogram", "Solve request latency in the ingress"),
}


@functools.cache
def _metric(name: str):
    """One Ray metric object per name and process, made on first use."""
    from ray.util import metrics

    spec = METRICS[name]
    tags = TAG_KEYS + spec.extra_tags
    full = f"glore_{name}"
    if spec.kind == "counter":
        return metrics.Counter(full, spec.description, tag_keys=tags)
    if spec.kind == "gauge":
        return metrics.Gauge(full, spec.description, tag_keys=tags)
    return metrics.Histogram(full, spec.description, boundaries=LATENCY_BOUNDARIES_S, tag_keys=tags)


def _recording() -> bool:
    try:
        import ray
    except ImportError:
        return False
    return ray.is_initialized()


@dataclass(frozen=True)
class StageMetrics:
    """Records one stage's metrics of one run."""

    stage: str
    run: str

    def record(self, name: str, value: float = 1, **tags: str) -> None:
        """Add `value` to a counter, set a gauge to it or observe it in a histogram."""
        if not _recording():
            return
        metric = _metric(name)
        tags = {"stage": self.stage, "run": self.run} | tags
        kind = METRICS[name].kind
        if kind == "counter":
            if value > 0:  # Ray's counters reject 0
                metric.inc(value, tags=tags)
        elif kind == "gauge":
            metric.set(value, tags=tags)
        else:
            metric.observe(value, tags=tags)
