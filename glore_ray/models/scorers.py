"""Step scorers (the ensemble's StepScorer), in this process: a trained ORM, SORM or PRM folder, and
the reranker that combines the ORM with the policy's likelihood (read by the policy's own engine
where it is served: `likelihood_reranker`)."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

from glore_ray.core.ensemble import at_once, logit
from glore_ray.core.generation import Likelihood, StepScorer
from glore_ray.core.prompts import solve_prompt


class _SolutionReader:
    """A Hugging Face model folder that reads solutions as the reward models do (the prompt, then
    each step and its newline, in batches): the shared part of the ORM's and the policy's reading."""

    def __init__(self, model_dir: str, auto_class: str, batch_size: int = 32):
        import torch
        import transformers

        device = "cuda" if torch.cuda.is_available() else "cpu"
        self._hold(getattr(transformers, auto_class).from_pretrained(model_dir).to(device).eval(),
                   transformers.AutoTokenizer.from_pretrained(model_dir), batch_size)

    def _hold(self, model, tokenizer, batch_size: int) -> None:
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size
        self.device = model.device
        self.max_length = model.config.max_position_embeddings

    @classmethod
    def over(cls, model, tokenizer, batch_size: int = 32):
        """A reader over a model this process already holds (an engine's), not a second copy."""
        reader = cls.__new__(cls)
        reader._hold(model, tokenizer, batch_size)
        return reader

    def _batches(self, questions: Sequence[str], steps: Sequence[Sequence[str]]):
        """(solution indices, their encoded examples, collated batch, logits) per batch; a solution
        without steps is skipped (it has nothing to read)."""
        import torch

        from glore_ray.models.encoding import collate, encode_step_example

        todo = [i for i, s in enumerate(steps) if s]
        for start in range(0, len(todo), self.batch_size):
            rows = todo[start:start + self.batch_size]
            examples = [encode_step_example(self.tokenizer, solve_prompt(questions[i]), list(steps[i]),
                                            [0] * len(steps[i]), self.max_length, f"solution {i}") for i in rows]
            batch = {k: v.to(self.device) for k, v in collate(examples, self.tokenizer.pad_token_id).items()}
            with torch.no_grad():
                logits = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            yield rows, examples, batch, logits


class HFStepScorer(_SolutionReader):
    """P(good) at the end of every step, from an `AutoModelForTokenClassification` folder."""

    def __init__(self, model_dir: str, batch_size: int = 32):
        super().__init__(model_dir, "AutoModelForTokenClassification", batch_size)

    def score(self, questions: Sequence[str], steps: Sequence[Sequence[str]]) -> list[list[float]]:
        from glore_ray.models.encoding import step_scores

        scores: list[list[float]] = [[] for _ in questions]
        for rows, _, batch, logits in self._batches(questions, steps):
            for i, values in zip(rows, step_scores(logits, batch["labels"]), strict=True):
                scores[i] = values
        return scores


IMPLICIT_FILE = "implicit_prm.json"
"""In an implicit PRM's folder: its reference model's folder (relative to this one when both are
local, so a moved run directory still serves) and its beta."""


def _relative(model_dir: str, other: str) -> str:
    """`other` as a spec in `model_dir` names it: relative when both are local, so that a run
    directory copied or moved elsewhere still serves from its own folders."""
    local = "://" not in other and "://" not in model_dir
    return os.path.relpath(other, model_dir) if local else other


def _resolve(model_dir: str, named: str) -> str:
    """A folder a spec in `model_dir` names (relative to it, or absolute, or a URI)."""
    return named if "://" in named else str(Path(model_dir) / named)


def write_implicit_spec(model_dir: str, reference_dir: str, beta: float) -> None:
    """Mark `model_dir` (a causal LM) as an implicit PRM over `reference_dir`."""
    spec = {"reference": _relative(model_dir, reference_dir), "beta": beta}
    (Path(model_dir) / IMPLICIT_FILE).write_text(json.dumps(spec, indent=2) + "\n")


class ImplicitPRMScorer(_SolutionReader):
    """P(good) at the end of every step from an implicit PRM folder (`training.objectives`):
    sigmoid(beta * sum of log(pi / pi_ref) over the solution's tokens up to the step's newline)."""

    def __init__(self, model_dir: str, batch_size: int = 32):
        import transformers

        spec = Path(model_dir) / IMPLICIT_FILE
        try:
            fields = json.loads(spec.read_text())
            reference, self.beta = _resolve(model_dir, fields["reference"]), float(fields["beta"])
        except (KeyError, ValueError, TypeError) as e:
            raise ValueError(f"{spec}: not an implicit PRM spec ({type(e).__name__}: {e}); "
                             "it needs `reference` and `beta`") from e
        super().__init__(model_dir, "AutoModelForCausalLM", batch_size)
        self.reference = transformers.AutoModelForCausalLM.from_pretrained(reference).to(self.device).eval()

    def score(self, questions: Sequence[str], steps: Sequence[Sequence[str]]) -> list[list[float]]:
        import torch

        from glore_ray.models.encoding import implicit_values, step_scores

        scores: list[list[float]] = [[] for _ in questions]
        for rows, _, batch, logits in self._batches(questions, steps):
            with torch.no_grad():
                reference = self.reference(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            values = implicit_values(logits, reference, batch, self.beta)
            for i, v in zip(rows, step_scores(values, batch["labels"]), strict=True):
                scores[i] = v
        return scores


class PolicyLikelihood(_SolutionReader):
    """The policy's mean token log-probability of a solution up to the end of every step, read as
    the ORM reads a solution (the prompt, then each step and its newline). Slips are low-probability
    tokens: on the model organism this ranks a question's solutions far better than a small ORM
    does (bench/orm_ranking.py)."""

    def __init__(self, policy_dir: str, batch_size: int = 32):
        super().__init__(policy_dir, "AutoModelForCausalLM", batch_size)

    def mean_logprobs(self, questions: Sequence[str], steps: Sequence[Sequence[str]]) -> list[list[float]]:
        from glore_ray.models.encoding import step_mean_logprobs, token_logprobs

        out: list[list[float]] = [[] for _ in questions]
        for rows, examples, batch, logits in self._batches(questions, steps):
            logprobs = token_logprobs(logits, batch["input_ids"]).tolist()
            for i, example, row_logprobs in zip(rows, examples, logprobs, strict=True):
                out[i] = step_mean_logprobs(row_logprobs, example)
        return out


def fit_logistic(features: Sequence[Sequence[float]], labels: Sequence[bool], steps: int = 2000) -> list[float]:
    """Weights (one per feature, then a bias) of a logistic regression, by full-batch gradient
    descent on standardised features, returned on the original scale."""
    import numpy as np

    x = np.array(features, dtype=float)
    mean, std = x.mean(0), x.std(0) + 1e-9
    z = np.hstack([(x - mean) / std, np.ones((len(x), 1))])
    y = np.array(labels, dtype=float)
    w = np.zeros(z.shape[1])
    for _ in range(steps):
        w -= 0.5 * z.T @ (1 / (1 + np.exp(-z @ w)) - y) / len(y)
    scale = w[:-1] / std
    return [*scale.tolist(), float(w[-1] - (scale * mean).sum())]


def fit_within_question(features: Sequence[Sequence[float]], questions: Sequence[str],
                        labels: Sequence[bool]) -> list[float]:
    """Weights (one per feature, then a bias) that rank the solutions *of one question*: a logistic
    regression on the feature differences of every (right, wrong) pair of solutions to one question
    (a Bradley-Terry fit: what differs between questions cancels), then the bias that makes the mean
    predicted P(correct) the share of right solutions. The scale is the pairwise fit's: refitting it
    pooled could flip its sign, ranking a question's solutions backwards."""
    by_question: dict[str, list[int]] = {}
    for i, q in enumerate(questions):
        by_question.setdefault(q, []).append(i)
    diffs: list[list[float]] = []
    for members in by_question.values():
        for r in (i for i in members if labels[i]):
            for w in (i for i in members if not labels[i]):
                diff = [a - b for a, b in zip(features[r], features[w], strict=True)]
                diffs += [diff, [-d for d in diff]]
    if not diffs:
        return fit_logistic(features, labels)
    direction = fit_logistic(diffs, [True, False] * (len(diffs) // 2))[:-1]  # symmetric pairs: no bias
    scores = [sum(w * x for w, x in zip(direction, f, strict=True)) for f in features]
    target, low, high = sum(labels) / len(labels), -100.0, 100.0
    for _ in range(60):  # the mean of sigmoid(score + bias) rises with the bias: bisect
        bias = (low + high) / 2
        mean = sum(1 / (1 + math.exp(-min(max(x + bias, -500), 500))) for x in scores) / len(scores)
        low, high = (bias, high) if mean < target else (low, bias)
    return [*direction, (low + high) / 2]


RERANKER_FILE = "reranker.json"


class LikelihoodReranker:
    """The ORM's value combined with the policy's likelihood at every step:
    sigmoid(w_orm * logit(ORM value) + w_lik * mean token log-probability so far + bias), the
    weights fitted on the ORM's training solutions (`pipeline.reranker.fit_reranker`). A StepScorer, so
    the ensemble and Serve use it wherever they use the ORM."""

    def __init__(self, orm: StepScorer, likelihood: Likelihood, weights: Sequence[float]):
        self.orm, self.likelihood = orm, likelihood
        self.w_orm, self.w_likelihood, self.bias = weights

    def score(self, questions: Sequence[str], steps: Sequence[Sequence[str]]) -> list[list[float]]:
        # Two models (two deployments when served): neither waits for the other.
        orm, likelihood = at_once(lambda: self.orm.score(questions, steps),
                                  lambda: self.likelihood.mean_logprobs(questions, steps))
        return [[1 / (1 + math.exp(-(self.w_orm * logit(v) + self.w_likelihood * lp + self.bias)))
                 for v, lp in zip(vs, lps, strict=True)] for vs, lps in zip(orm, likelihood, strict=True)]


def load_scorer(model_dir: str):
    """The StepScorer in a folder: a reranker folder (RERANKER_FILE naming its ORM and policy
    folders and its weights; here with a copy of the policy of its own, for offline use), an implicit PRM (IMPLICIT_FILE) or a token-classification model
    folder (an ORM, SORM or PRM with a value head)."""
    if (Path(model_dir) / IMPLICIT_FILE).is_file():
        return ImplicitPRMScorer(model_dir)
    if not (Path(model_dir) / RERANKER_FILE).is_file():
        return HFStepScorer(model_dir)
    orm, policy, weights = read_reranker_spec(model_dir)
    return LikelihoodReranker(load_scorer(orm), PolicyLikelihood(policy), weights)


def with_reranker(models: dict, weights: Sequence[float] | None) -> dict:
    """`models` (by name) with, given a reranker's weights, the LikelihoodReranker over their own ORM
    and policy as `reranker`: the evaluation's model servers and Serve's deployments alike."""
    if weights is None:
        return models
    return models | {"reranker": LikelihoodReranker(models["orm"], models["policy"], weights)}


def reranker_weights(model_dir: str, orm_dir: str, policy_dir: str) -> list[float]:
    """A reranker folder's weights, for a LikelihoodReranker over the ORM and the policy as they are
    already served (the evaluation's model servers, the Serve deployments): the policy's own engine
    then reads the likelihood, and no process holds a second copy of the policy. The weights belong
    to the folders they were fitted over: serving them with another ORM or policy is an error."""
    fitted_orm, fitted_policy, weights = read_reranker_spec(model_dir)
    for role, fitted, served in (("ORM", fitted_orm, orm_dir), ("policy", fitted_policy, policy_dir)):
        if not _same_folder(fitted, served):
            raise ValueError(f"{model_dir}/{RERANKER_FILE}: fitted over the {role} {fitted}, "
                             f"but the {role} served is {served}")
    return weights


def _same_folder(a: str, b: str) -> bool:
    if "://" in a or "://" in b:
        return a.rstrip("/") == b.rstrip("/")
    return os.path.realpath(a) == os.path.realpath(b)


def write_reranker_spec(model_dir: str, orm: str, policy: str, weights: Sequence[float]) -> None:
    """Make `model_dir` a reranker folder over the ORM and policy folders, named relative to it."""
    Path(model_dir).mkdir(parents=True, exist_ok=True)
    spec = {"orm": _relative(model_dir, orm), "policy": _relative(model_dir, policy), "weights": list(weights)}
    (Path(model_dir) / RERANKER_FILE).write_text(json.dumps(spec, indent=2) + "\n")


def read_reranker_spec(model_dir: str) -> tuple[str, str, list[float]]:
    """The ORM's and the policy's folders and the three weights of a reranker folder."""
    spec = Path(model_dir) / RERANKER_FILE
    try:
        fields = json.loads(spec.read_text())
        weights = [float(w) for w in fields["weights"]]
        if len(weights) != 3:
            raise ValueError(f"{len(weights)} weights")
        return _resolve(model_dir, fields["orm"]), _resolve(model_dir, fields["policy"]), weights
    except (KeyError, ValueError, TypeError) as e:
        raise ValueError(f"{spec}: not a reranker spec ({type(e).__name__}: {e}); "
                         "it needs `orm`, `policy` and three `weights`") from e
