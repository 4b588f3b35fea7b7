"""The reranker stage: the likelihood reranker's weights, fitted in the driver on held-out ORM rows
(a few thousand solutions; no Ray Data)."""

from __future__ import annotations

from glore_ray.config import RerankerConfig
from glore_ray.io import absolute, filesystem_for
from glore_ray.layout import MODEL, output
from glore_ray.pipeline.runner import StageContext


def fit_reranker(ctx: StageContext, reranker: RerankerConfig) -> dict:
    """The likelihood reranker (`models.scorers.LikelihoodReranker`): its three weights fitted
    (`reranker.objective`) on the first `reranker.fit_rows` held-out ORM `rows` (each a solution and
    its correctness, at the answer line; questions no reward model trained on), written with its
    ORM's and policy's folders (relative to it) as `model/reranker.json`. Reports each ranker's
    within-question AUROC on those rows."""
    import pyarrow.dataset as ds

    from glore_ray.core.stats import within_question_auroc
    from glore_ray.models.scorers import (
        PolicyLikelihood,
        fit_logistic,
        fit_within_question,
        load_scorer,
        logit,
        write_reranker_spec,
    )

    orm_rows, orm, policy = (ctx.inputs[k] for k in ("rows", "orm", "policy"))
    filesystem, root = filesystem_for(orm_rows)
    rows = ds.dataset(root, filesystem=filesystem, format="parquet").head(
        reranker.fit_rows, columns=["problem_id", "prompt", "completions", "labels"]).to_pylist()
    if not rows:
        raise ValueError(f"{orm_rows}: no held-out ORM rows to fit the reranker on "
                         "(raise reranker.heldout_share or rollouts.max_questions)")
    questions, steps = [r["prompt"] for r in rows], [r["completions"] for r in rows]
    correct = [r["labels"][-1] for r in rows]
    orm_values = [logit(v[-1]) for v in load_scorer(orm).score(questions, steps)]
    likelihood = [lp[-1] for lp in PolicyLikelihood(policy).mean_logprobs(questions, steps)]
    features = list(zip(orm_values, likelihood))
    weights = (fit_within_question(features, [r["problem_id"] for r in rows], correct)
               if reranker.objective == "within_question" else fit_logistic(features, correct))
    combined = [weights[0] * o + weights[1] * lp + weights[2] for o, lp in zip(orm_values, likelihood)]

    def ranking(scores: list[float]) -> float | None:
        groups: dict[str, list[tuple[float, bool]]] = {}
        for row, score, ok in zip(rows, scores, correct, strict=True):
            groups.setdefault(row["problem_id"], []).append((score, ok))
        auroc, _ = within_question_auroc(groups.values())
        return None if auroc is None else round(auroc, 4)

    write_reranker_spec(output(absolute(ctx.dir), MODEL), absolute(orm), absolute(policy), weights)
    counts = {"rows": len(rows), "weights": [round(w, 4) for w in weights],
              "orm_within_question_auroc": ranking(orm_values),
              "likelihood_within_question_auroc": ranking(likelihood),
              "reranker_within_question_auroc": ranking(combined)}
    return counts
