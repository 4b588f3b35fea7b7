"""The statistics the report and the benchmarks measure with: intervals, paired bootstrap
differences, ranking AUROCs and ProcessBench's first-error F1. Plain Python (numpy for the bootstrap)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

BOOTSTRAP_RESAMPLES = 10_000


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion (sound at 0 and 1, unlike the normal one)."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def paired_bootstrap(method: Sequence[bool], baseline: Sequence[bool], resamples: int = BOOTSTRAP_RESAMPLES,
                     seed: int = 0) -> dict:
    """Mean paired difference (method - baseline) of per-question outcomes and its 95% percentile
    interval from a bootstrap over questions. Each difference is -1, 0 or 1, so resampling n
    questions is one multinomial draw over those three counts."""
    import numpy as np

    diffs = [int(a) - int(b) for a, b in zip(method, baseline, strict=True)]
    n = len(diffs)
    if n == 0:
        return {"mean": 0.0, "low": 0.0, "high": 0.0}
    probs = [diffs.count(v) / n for v in (-1, 0, 1)]
    counts = np.random.default_rng(seed).multinomial(n, probs, size=resamples)
    means = (counts[:, 2] - counts[:, 0]) / n
    low, high = np.percentile(means, [2.5, 97.5])
    return {"mean": sum(diffs) / n, "low": float(low), "high": float(high)}


def auroc(scores: Sequence[float], labels: Sequence[bool]) -> float | None:
    """Probability that a random correct solution scores above a random wrong one (ties count
    half): how well a model ranks, whatever its threshold. None without both kinds."""
    order = sorted(range(len(scores)), key=lambda i: scores[i])
    ranks = [0.0] * len(scores)
    i = 0
    while i < len(order):  # average ranks over ties
        j = i
        while j + 1 < len(order) and scores[order[j + 1]] == scores[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    positives = sum(labels)
    negatives = len(labels) - positives
    if not positives or not negatives:
        return None
    rank_sum = sum(r for r, label in zip(ranks, labels) if label)
    return (rank_sum - positives * (positives + 1) / 2) / (positives * negatives)


def within_question_auroc(groups: Iterable[Sequence[tuple[float, bool]]]) -> tuple[float | None, int]:
    """(P(a right solution outscores a wrong one of the same question), ties half; the number of
    such pairs) over groups of (score, correct), one group per question. None without a pair."""
    concordant, pairs = 0.0, 0
    for group in groups:
        for right, _ in (g for g in group if g[1]):
            for wrong, _ in (g for g in group if not g[1]):
                pairs += 1
                concordant += 1.0 if right > wrong else 0.5 if right == wrong else 0.0
    return (concordant / pairs if pairs else None), pairs


def _first_flagged(values: Sequence[float], threshold: float) -> int | None:
    return next((i for i, v in enumerate(values) if v < threshold), None)


def _harmonic_mean(*tallies: Sequence[int]) -> float | None:
    """Harmonic mean of the accuracies right/seen of the tallies; None unless every one was seen."""
    if not all(seen for _, seen in tallies):
        return None
    accuracies = [right / seen for right, seen in tallies]
    return 0.0 if 0.0 in accuracies else len(accuracies) / sum(1 / a for a in accuracies)


def first_error_f1(solutions: Iterable[tuple[Sequence[float], int | None]], threshold: float) -> float | None:
    """ProcessBench's first-error F1 over (step values, exact first wrong step) pairs: the harmonic
    mean of the accuracy on erroneous solutions (the first value below `threshold` is at the first
    wrong step) and on error-free ones (no value below it). None unless both kinds were seen."""
    erroneous, error_free = [0, 0], [0, 0]  # right, seen
    for values, first_wrong in solutions:
        flagged = _first_flagged(values, threshold)
        tally = error_free if first_wrong is None else erroneous
        tally[0] += flagged == first_wrong
        tally[1] += 1
    return _harmonic_mean(erroneous, error_free)
