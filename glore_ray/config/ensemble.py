"""The refinement ensemble's vocabulary and settings: its models, its candidates' names, and the
thresholds and offsets that decide when, where and how it refines (`core.ensemble` runs it; the
evaluation and Serve configure it)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Literal

from glore_ray.config.fields import check

GENERATORS = ("policy", "global_refiner", "local_refiner")
SCORERS = ("orm", "sorm")
MODELS = GENERATORS + SCORERS
"""The ensemble's five models, by their stage, config section and deployment names."""
EVAL_SCORERS = (*SCORERS, "prm", "reranker")
"""The step scorers an evaluation reads every solution with: the ensemble's, the exact-label PRM (the
model organism) and the likelihood reranker."""
CANDIDATES = ("draft", "global", "local")
"""The candidates' sources; with `refine_samples` > 1 a refiner's further samples are `global_2`, ..."""


REPORT_STEP_THRESHOLD = 0.5
"""The step value below which the report's first-error F1 counts a step as flagged (a value
head's midpoint), one definition for every reward model and run; what the ensemble uses is
`step_threshold`."""

STEP_THRESHOLD = 0.25
"""The SORM's step threshold for "where", evaluated and served alike: chosen on the demo's
validation run for the implicit PRM head (the drafts' first-error F1 0.532, 0.0 at a value head's
0.5, whose scale an implicit PRM's values, sigmoid of a log-ratio that starts at 0, do not share;
bench/results/rerank_calibration_demo.json)."""


@dataclass(frozen=True)
class EnsembleSettings:
    """The refinement ensemble's settings: the `ensemble:` section, which the evaluation and Serve
    both read (so the served ensemble is the evaluated one: `glore serve` reads the run's config),
    and a Serve request overrides per call. Choose the thresholds and offsets on a validation run
    (bench/rerank_calibration.py)."""

    orm_threshold: float = 0.5
    """Refine a draft whose ORM score is below this."""
    always_refine: bool = False
    """Refine every draft, or only those the ORM scores below `orm_threshold`: Serve's setting; the
    evaluation refines as `eval.always_refine` says."""
    step_threshold: float = STEP_THRESHOLD
    """The first step whose SORM value falls below this is where the local refiner starts (the
    value's scale is the head's)."""
    orm_step_threshold: float = 0.15
    """The same for the ORM's step values, when they locate the step (`where: orm`, and the
    evaluation's "where: ORM" row; the demo's validation choice: the drafts' first-error F1 0.625,
    0.0 at 0.5; bench/results/rerank_calibration_demo.json)."""
    where: Literal["sorm", "orm"] = "sorm"
    """Which reward model's step values locate the first bad step."""
    max_tokens: int | None = None
    """Tokens per generation of the draft and the refiners; null: `sampling.max_tokens`."""
    refine_temperature: float = 0.0
    """The refiners decode greedily (0, the paper), or sample: iterated refinement's later rounds
    sample, since greedy refiners given the same draft again propose the same rewrites."""
    seed: int = 0
    """The refiners' sampling seed (with refine_temperature > 0)."""
    global_offset: float = 0.0
    """Added to the global refinement's ORM logit in the rerank (the draft's is 0): calibrates the
    ranker per candidate source, since a likelihood term favours the policy's own draft and an
    implicit PRM the refiners' rewrites."""
    local_offset: float = 0.0
    """The same for the local refinement."""
    refine_samples: int = 1
    """Refinements per refiner (beyond the paper): the first decoded as `refine_temperature` says,
    the others sampled at `sample_temperature`, each a candidate of the rerank (`global_2`, ...,
    `local_2`, ...): the verifier chooses among more rewrites than the paper's two."""
    sample_temperature: float = 1.0

    def with_max_tokens(self, default: int) -> EnsembleSettings:
        """These settings with `max_tokens` set: their own, else `default` (`sampling.max_tokens`)."""
        return dataclasses.replace(self, max_tokens=self.max_tokens or default)

    @property
    def where_threshold(self) -> float:
        """The step threshold of the model that locates the first bad step."""
        return self.step_threshold if self.where == "sorm" else self.orm_step_threshold

    def offset(self, candidate: str) -> float:
        return {"draft": 0.0, "global": self.global_offset, "local": self.local_offset}[source(candidate)]

    def validate(self, key: str) -> None:
        for name in ("orm_threshold", "step_threshold", "orm_step_threshold"):
            check(0 <= getattr(self, name) <= 1, f"{key}.{name}", "must be in [0, 1]")
        for name in ("global_offset", "local_offset"):
            check(math.isfinite(getattr(self, name)), f"{key}.{name}", "must be a finite number")
        check(self.max_tokens is None or self.max_tokens > 0, f"{key}.max_tokens", "must be > 0")
        check(self.refine_temperature >= 0, f"{key}.refine_temperature", "must be >= 0")
        check(self.refine_samples >= 1, f"{key}.refine_samples", "must be >= 1")
        check(self.sample_temperature > 0, f"{key}.sample_temperature", "must be > 0")


def candidate_name(source: str, sample: int) -> str:
    """A refiner's first refinement is named by its source (`global`), its further samples `global_2`, ..."""
    return source if sample == 1 else f"{source}_{sample}"


def source(candidate: str) -> str:
    return candidate.partition("_")[0]
