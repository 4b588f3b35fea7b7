"""The GLoRe refinement ensemble: when, where and how to refine a draft, then rerank.

For a batch of questions: a greedy draft from the policy (or one the caller gives); the ORM's
score of the draft decides **when** to refine (below `orm_threshold`, or always); the step values
of the SORM (or of the ORM) find **where**: the first step below its step threshold, which the local
refiner rewrites from its `[BAD]` mark; the global refiner rewrites the whole draft (**how**);
the ORM reranks the draft and its refinements (several per refiner with `refine_samples`, beyond
the paper) and the best is the answer. Every decision is recorded.
Calls that do not depend on each other run at once (the two refiners; with always_refine, the
ORM's and the SORM's reading of the draft), so a batch waits for the slower model, not for both.

Engine- and deployment-agnostic: the evaluation calls it with in-process engines, the Serve
app with handles to model deployments. Imports neither.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import TypeVar

from glore_ray.config.ensemble import (
    CANDIDATES,
    MODELS,
    EnsembleSettings,
    candidate_name,
)
from glore_ray.core.generation import Engine, Generation, Sampling, StepScorer, Usage
from glore_ray.core.grading import extract_answer, format_answer, scored_steps, split_steps
from glore_ray.core.prompts import global_refine_prompt, local_refine_prompt, solve_prompt

SCORE_TIE = 1e-5
"""ORM scores closer than this are equal (float noise across batch shapes is ~1e-7)."""


def _order(candidate: str) -> tuple[int, int]:
    """The draft first, then the global refinements, then the local ones, each in sample order."""
    name, _, sample = candidate.partition("_")
    return CANDIDATES.index(name), int(sample or 1)


@dataclass
class Decision:
    """Everything the ensemble decided for one question."""

    question: str
    draft: str
    refined: bool
    """Whether the ORM's draft score called for refinement (always, with always_refine)."""
    global_: str | None = None
    local: str | None = None
    first_bad_step: int | None = None
    """0-based step the local refiner rewrote from; None when no step fell below the threshold."""
    samples: dict[str, str] = field(default_factory=dict)
    """The refiners' further samples by candidate name (`refine_samples` > 1)."""
    step_values: list[float] = field(default_factory=list)
    orm_scores: dict[str, float] = field(default_factory=dict)
    chosen: str = "draft"
    answer: str | None = None
    finish_reasons: dict[str, str] = field(default_factory=dict)
    """Why each generated candidate ended (`stop` or `length`); a caller's draft has none."""
    usage: Usage = field(default_factory=Usage)

    def candidate(self, name: str) -> str | None:
        if name in CANDIDATES:
            return {"draft": self.draft, "global": self.global_, "local": self.local}[name]
        return self.samples.get(name)

    def refinements(self) -> dict[str, str]:
        """Every refinement by candidate name, in the rerank's order."""
        named = {"global": self.global_, "local": self.local} | self.samples
        return {n: named[n] for n in sorted(named, key=_order) if named[n] is not None}

    def add_refinements(self, source: str, rewrites: Generation | None) -> None:
        """A refiner's rewrites (its first, then its further samples), and what they cost."""
        if rewrites is None:
            return
        self.usage.add(rewrites)
        for sample, completion in enumerate(rewrites.completions, start=1):
            name = source if sample == 1 else candidate_name(source, sample)
            if sample == 1:
                setattr(self, "global_" if source == "global" else "local", completion.text)
            else:
                self.samples[name] = completion.text
            self.finish_reasons[name] = completion.finish_reason

    def to_row(self) -> dict:
        row = asdict(self)
        row["global"] = row.pop("global_")
        return row


def rerank(scores: Mapping[str, float], settings: EnsembleSettings) -> str:
    """The candidate with the highest ORM score after its source's offset (in logit space).
    Scores within SCORE_TIE of the best are a tie, which the earlier candidate (`_order`: the draft
    first) wins: a score moves in its last digits with the batch it was computed in, and that must
    not change the answer."""
    adjusted = {n: v if settings.offset(n) == 0 else 1 / (1 + math.exp(-(logit(v) + settings.offset(n))))
                for n, v in scores.items()}
    best = max(adjusted.values())
    return min((n for n, v in adjusted.items() if v >= best - SCORE_TIE), key=_order)


def logit(p: float, eps: float = 1e-6) -> float:
    """log(p / (1 - p)), p clipped to [eps, 1 - eps]."""
    p = min(max(p, eps), 1 - eps)
    return math.log(p / (1 - p))


def _score(scorer: StepScorer, questions: Sequence[str], texts: Sequence[str]) -> list[float]:
    """The ORM's solution score: its value at the answer line (the last scored step; 0 for a
    solution with none)."""
    values = scorer.score(questions, [scored_steps(t) for t in texts])
    return [v[-1] if v else 0.0 for v in values]


def first_bad_step(step_values: Sequence[float], draft: str, threshold: float) -> int | None:
    """The first reasoning step of `draft` whose value is below `threshold` (the answer line's
    value counts for the ORM's score, but there is no step to rewrite from there)."""
    n_steps = len(split_steps(draft))
    return next((i for i, value in enumerate(step_values[:n_steps]) if value < threshold), None)


def _decode(engine: Engine, prompts: list[str], max_tokens: int, temperature: float = 0.0,
            seed: int = 0) -> list[Generation]:
    if not prompts:
        return []
    return engine.generate(prompts, Sampling(n=1, temperature=temperature, max_tokens=max_tokens, seed=seed))


A = TypeVar("A")
B = TypeVar("B")


def at_once(first: Callable[[], A], second: Callable[[], B]) -> tuple[A, B]:
    """Two independent model calls, the second on a thread of its own: each blocks on its own
    model (a remote one on its queue and a round trip)."""
    with ThreadPoolExecutor(1) as thread:
        later = thread.submit(second)
        return first(), later.result()


def _answer(text: str) -> str | None:
    value = extract_answer(text)
    return None if value is None else format_answer(value)


M = TypeVar("M")


def ensemble_models(models: Mapping[str, M]) -> dict[str, M]:
    """The ensemble's five models out of a run's (engines, deployments or folders, by name): the
    likelihood reranker, where the run has one, ranks in the ORM's place. The evaluation and Serve
    both take their models from here."""
    return {m: models["reranker"] if m == "orm" and "reranker" in models else models[m] for m in MODELS}


@dataclass
class RefinementEnsemble:
    policy: Engine
    global_refiner: Engine
    local_refiner: Engine
    orm: StepScorer
    sorm: StepScorer
    settings: EnsembleSettings = field(default_factory=EnsembleSettings)

    @property
    def max_tokens(self) -> int:
        """Tokens per generation: the settings', else the engines' default."""
        return self.settings.max_tokens or Sampling.max_tokens

    @classmethod
    def of(cls, models: Mapping[str, Engine | StepScorer], settings: EnsembleSettings) -> RefinementEnsemble:
        """The ensemble over `models` by name (MODELS; other entries are ignored)."""
        return cls(**{m: models[m] for m in MODELS}, settings=settings)

    def drafts(self, questions: Sequence[str]) -> list[Generation]:
        """The policy's greedy draft of each question."""
        return _decode(self.policy, [solve_prompt(q) for q in questions], self.max_tokens)

    def solve(self, questions: Sequence[str], drafts: Sequence[str | None] | None = None,
              draft_scores: Sequence[float] | None = None,
              draft_values: Sequence[Sequence[float]] | None = None) -> list[Decision]:
        """Decide for each question. The caller that has already read the given drafts (the
        evaluation scores every solution with every reward model) passes the ORM's scores and the
        "where" model's step values, so that no draft is scored twice."""
        s = self.settings
        drafts = list(drafts) if drafts is not None else [None] * len(questions)
        missing = [i for i, d in enumerate(drafts) if d is None]
        generated: dict[int, Generation] = {}
        for i, g in zip(missing, self.drafts([questions[i] for i in missing])):
            drafts[i], generated[i] = g.completions[0].text, g
        where = self.sorm if s.where == "sorm" else self.orm
        if draft_scores is not None:
            values = None if draft_values is None else list(draft_values)
        # Every draft is refined: where need not wait for when (unless one model answers both).
        elif s.always_refine and drafts and where is not self.orm:
            draft_scores, values = at_once(lambda: _score(self.orm, questions, drafts),
                                            lambda: where.score(questions, [scored_steps(d) for d in drafts]))
        else:
            draft_scores, values = _score(self.orm, questions, drafts), None
        decisions = [Decision(q, d, s.always_refine or score < s.orm_threshold, orm_scores={"draft": score})
                     for q, d, score in zip(questions, drafts, draft_scores, strict=True)]
        for i, g in generated.items():
            decisions[i].usage.add(g)
            decisions[i].finish_reasons["draft"] = g.completions[0].finish_reason
        todo = [d for d in decisions if d.refined]
        if not todo:
            return self._choose(decisions)

        if values is None:
            values = where.score([d.question for d in todo], [scored_steps(d.draft) for d in todo])
        elif len(values) == len(decisions):  # every draft's, from the caller or read at once above
            values = [v for d, v in zip(decisions, values, strict=True) if d.refined]
        for d, v in zip(todo, values, strict=True):
            d.step_values = v
            d.first_bad_step = first_bad_step(v, d.draft, s.where_threshold)

        globals_, locals_ = at_once(
            lambda: self._refine(self.global_refiner, [global_refine_prompt(d.question, d.draft) for d in todo],
                                 s.refine_samples),
            lambda: self.local_refinements([d.question for d in todo], [d.draft for d in todo],
                                           [d.first_bad_step for d in todo], s.refine_samples))
        for d, global_rewrites, local_rewrites in zip(todo, globals_, locals_, strict=True):
            d.add_refinements("global", global_rewrites)
            d.add_refinements("local", local_rewrites)

        # Every refinement's score in one ORM call.
        have = [(d, name, text) for d in todo for name, text in d.refinements().items()]
        scores = _score(self.orm, [d.question for d, _, _ in have], [text for _, _, text in have])
        for (d, name, _), score in zip(have, scores, strict=True):
            d.orm_scores[name] = score
        return self._choose(decisions)

    def _refine(self, engine: Engine, prompts: list[str], n: int) -> list[Generation]:
        """`n` rewrites per prompt as one Generation each (its prompt tokens counted per call): the
        first decoded as `refine_temperature` says, the others sampled at `sample_temperature` in
        one call."""
        s = self.settings
        first = _decode(engine, prompts, self.max_tokens, s.refine_temperature, s.seed)
        if n == 1 or not prompts:
            return first
        # Seeded apart from the first: in a later round the first is sampled at the same seed.
        more = engine.generate(prompts, Sampling(n=n - 1, temperature=s.sample_temperature, max_tokens=self.max_tokens,
                                                 seed=s.seed + 1))
        return [Generation(a.prompt, a.prompt_tokens + b.prompt_tokens, a.completions + b.completions)
                for a, b in zip(first, more, strict=True)]

    def local_refinements(self, questions: Sequence[str], drafts: Sequence[str], bad_steps: Sequence[int | None],
                          n: int = 1) -> list[Generation | None]:
        """The local refiner's `n` rewrites of each draft from its bad step on (None where there is
        none), each text the draft's steps before the mark, then the refiner's continuation."""
        todo = [i for i, bad in enumerate(bad_steps) if bad is not None]
        prompts = [local_refine_prompt(questions[i], split_steps(drafts[i]), bad_steps[i]) for i in todo]
        out: list[Generation | None] = [None] * len(drafts)
        for i, g in zip(todo, self._refine(self.local_refiner, prompts, n), strict=True):
            kept = split_steps(drafts[i])[:bad_steps[i]]
            out[i] = dataclasses.replace(g, completions=[
                dataclasses.replace(c, text="\n".join(kept + [c.text.strip()])) for c in g.completions])
        return out

    def refine_locally(self, questions: Sequence[str], drafts: Sequence[str],
                       bad_steps: Sequence[int | None]) -> list[str | None]:
        """The local refiner's first rewrite of each draft (None where there is no bad step)."""
        return [None if g is None else g.completions[0].text
                for g in self.local_refinements(questions, drafts, bad_steps)]

    def _choose(self, decisions: list[Decision]) -> list[Decision]:
        for d in decisions:
            d.chosen = rerank(d.orm_scores, self.settings)
            d.answer = _answer(d.candidate(d.chosen))
        return decisions


def iterate(ensemble: RefinementEnsemble, questions: Sequence[str], decisions: Sequence[Decision],
            max_rounds: int, temperature: float, seed: int) -> list[list[Decision]]:
    """Each round's deciding Decision per question (its answer: `d.candidate(d.chosen)`): round 1 is
    `decisions`; in every later round a question whose chosen text scores below `orm_threshold` is
    refined again from that text (the ensemble with it as the draft, refining only below the
    threshold, its refiners sampling at `temperature` with a seed per round), the others keep theirs."""
    current = list(decisions)
    rounds = [list(current)]
    for r in range(2, max_rounds + 1):
        again = dataclasses.replace(ensemble, settings=dataclasses.replace(
            ensemble.settings, always_refine=False, refine_temperature=temperature, seed=seed + r))
        todo = [i for i, d in enumerate(current) if d.orm_scores[d.chosen] < again.settings.orm_threshold]
        redone = again.solve([questions[i] for i in todo], [current[i].candidate(current[i].chosen) for i in todo]
                             ) if todo else []
        for i, d in zip(todo, redone, strict=True):
            current[i] = d
        rounds.append(list(current))
    return rounds
