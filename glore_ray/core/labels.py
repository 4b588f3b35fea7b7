"""Step labels for the reward models, as plain functions over rollouts and an engine.

ORM: every step of a rollout carries the rollout's final correctness.

SORM (the paper's V* estimate): step i of a rollout is positive iff some policy continuation of the
prefix P_i (steps 0..i) reaches the right answer *and uses the prefix's last intermediate result*;
then a positive step makes every earlier step positive, so a rollout's labels are `True * f` then
`False * (n - f)`, with `f` its first negative step. Two ways to get there:

- exhaustive (the paper): K continuations of every prefix of every rollout;
- efficient (ours): the same rule for far fewer tokens. Prefixes shared by a question's rollouts
  are labelled once; a binary search finds `f` (labels are monotone after propagation, so
  log2(n) + 1 prefixes per rollout instead of n); continuations come in rounds and a prefix stops
  at its first correct one; and a correct rollout is free evidence: a rollout that starts with P_i
  is a policy sample conditioned on P_i, so a remainder that succeeds settles P_i as positive. A
  failed remainder is not one of the K: every prefix keeps K fresh chances to succeed, as in
  exhaustive mode, or good prefixes of wrong rollouts would be labelled negative more often. The
  engine's prefix caching shares the question's KV cache across all of them.

Both modes keep, for each rollout with 0 < f < n, one correct continuation of P_{f-1} and one
incorrect continuation of P_f: the local refiner's (target, draft) pair.
"""

from __future__ import annotations

import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction

from glore_ray.core.generation import Engine, Sampling
from glore_ray.core.grading import (
    ANSWER_MARKER,
    answer_line,
    answers_match,
    extract_answer,
    step_result,
    uses_result,
)
from glore_ray.core.prompts import solve_prompt
from glore_ray.core.rollouts import Question, Rollout


def continuation_prompt(question: str, prefix: Sequence[str]) -> str:
    """The policy's prompt followed by the prefix's steps: the policy continues from there."""
    return solve_prompt(question) + "".join(f"{step}\n" for step in prefix)


def is_good_continuation(prefix: Sequence[str], continuation: str, gold: Fraction) -> bool:
    """Reaches the gold answer and uses the prefix's last intermediate result."""
    full = "\n".join([*prefix, continuation])
    return (answers_match(extract_answer(full), gold)
            and uses_result(continuation, step_result(prefix[-1]) if prefix else None))


def propagate(raw: Sequence[bool]) -> list[bool]:
    """A positive step makes every earlier step positive."""
    labels, seen = [False] * len(raw), False
    for i in range(len(raw) - 1, -1, -1):
        seen = seen or raw[i]
        labels[i] = seen
    return labels


def first_negative(labels: Sequence[bool]) -> int:
    """Index of the first False label; len(labels) when every label is True."""
    return next((i for i, label in enumerate(labels) if not label), len(labels))


def orm_labels(n_steps: int, correct: bool) -> list[bool]:
    return [correct] * n_steps


@dataclass
class PrefixEvidence:
    """What is known about one prefix: continuations sampled, and one good and one bad example."""

    sampled: int = 0
    tokens: int = 0
    good: str | None = None
    """A continuation that reaches the answer using the prefix's last result."""
    bad: str | None = None
    """A continuation that does not (preferring one with a wrong final answer)."""

    @property
    def positive(self) -> bool:
        return self.good is not None

    def add(self, prefix: Sequence[str], continuation: str, gold: Fraction) -> None:
        if is_good_continuation(prefix, continuation, gold):
            self.good = self.good if self.good is not None else continuation
        elif self.bad is None or answers_match(extract_answer(self.bad), gold):
            self.bad = continuation


@dataclass
class LabelledRollout:
    rollout: Rollout
    labels: list[bool]
    pos_continuation: str | None = None
    """A good continuation of P_{f-1} (f = first negative step), for a local-refinement pair."""
    neg_continuation: str | None = None
    """A bad continuation of P_f."""


@dataclass
class LabelStats:
    prefixes_labelled: int = 0
    continuations: int = 0
    generated_tokens: int = 0
    free_continuations: int = 0
    """Rollout remainders recorded as evidence (efficient mode only); only a success settles a prefix."""


@dataclass
class SormLabeller:
    """Labels the rollouts of a batch of questions with one engine (see the module docstring)."""

    engine: Engine
    mode: str
    k: int
    temperature: float
    max_tokens: int
    seed: int = 0
    round_size: int = 1
    """Efficient mode: continuations per prefix per round; a prefix stops at its first good one."""
    stats: LabelStats = field(default_factory=LabelStats)

    def label(self, questions: Sequence[Question]) -> list[list[LabelledRollout]]:
        if self.mode == "exhaustive":
            return self._exhaustive(questions)
        if self.mode == "efficient":
            return self._efficient(questions)
        raise ValueError(f"unknown SORM labelling mode {self.mode!r} (exhaustive or efficient)")

    def _sample(self, requests: list[tuple[Question, tuple[str, ...]]], n: int, round_: int) -> list[list[str]]:
        """n continuations of each (question, prefix), as texts."""
        if not requests:
            return []
        prompts = [continuation_prompt(q.question, prefix) for q, prefix in requests]
        sampling = Sampling(n=n, temperature=self.temperature, max_tokens=self.max_tokens,
                            seed=self.seed * 1_000_003 + round_)
        generations = self.engine.generate(prompts, sampling)
        self.stats.continuations += n * len(requests)
        self.stats.generated_tokens += sum(c.n_tokens for g in generations for c in g.completions)
        return [[c.text for c in g.completions] for g in generations]

    def _exhaustive(self, questions: Sequence[Question]) -> list[list[LabelledRollout]]:
        requests = [(q, tuple(r.steps[:i + 1])) for q in questions for r in q.rollouts for i in range(len(r.steps))]
        texts = iter(self._sample(requests, self.k, 0))
        self.stats.prefixes_labelled += len(requests)
        out = []
        for q in questions:
            labelled = []
            for rollout in q.rollouts:
                per_prefix = []
                for i in range(len(rollout.steps)):
                    ev = PrefixEvidence(sampled=self.k)
                    for text in next(texts):
                        ev.add(rollout.steps[:i + 1], text, q.gold)
                    per_prefix.append(ev)
                labels = propagate([ev.positive for ev in per_prefix])
                labelled.append(_labelled(rollout, labels, per_prefix.__getitem__))
            out.append(labelled)
        return out

    def _efficient(self, questions: Sequence[Question]) -> list[list[LabelledRollout]]:
        evidence: dict[tuple[str, tuple[str, ...]], PrefixEvidence] = {}
        for q in questions:  # free evidence: every rollout continues each of its own prefixes
            for r in q.rollouts:
                for i in range(len(r.steps)):
                    ev = evidence.setdefault((q.id, tuple(r.steps[:i + 1])), PrefixEvidence())
                    # A success settles the prefix; a failure is kept as its bad example but is not
                    # one of its K samples (those are fresh, as in exhaustive mode).
                    ev.add(r.steps[:i + 1], _remainder(r, i + 1), q.gold)
                    self.stats.free_continuations += 1
        searches = [(q, r, _BinarySearch(len(r.steps))) for q in questions for r in q.rollouts]
        probed: set[tuple[str, tuple[str, ...]]] = set()
        round_ = 0
        while True:
            pending: dict[tuple[str, tuple[str, ...]], Question] = {}
            for q, r, search in searches:
                while not search.done:  # settle every probe whose prefix is already decided
                    key = (q.id, tuple(r.steps[:search.probe + 1]))
                    probed.add(key)
                    ev = evidence[key]
                    if not (ev.positive or ev.sampled >= self.k):
                        pending[key] = q
                        break
                    search.answer(ev.positive)
            if not pending:
                break
            by_n: dict[int, list[tuple[str, tuple[str, ...]]]] = {}
            for key in pending:  # a round asks each prefix for at most round_size more
                by_n.setdefault(min(self.round_size, self.k - evidence[key].sampled), []).append(key)
            for n, keys in by_n.items():
                texts = self._sample([(pending[key], key[1]) for key in keys], n, round_)
                for key, continuations in zip(keys, texts, strict=True):
                    for text in continuations:
                        evidence[key].add(key[1], text, pending[key].gold)
                    evidence[key].sampled += n
            round_ += 1
        self.stats.prefixes_labelled += len(probed)
        out: dict[str, list[LabelledRollout]] = {q.id: [] for q in questions}
        for q, r, search in searches:
            labels = [i < search.lo for i in range(len(r.steps))]
            out[q.id].append(_labelled(r, labels, lambda i, q=q, r=r: evidence[(q.id, tuple(r.steps[:i + 1]))]))
        return [out[q.id] for q in questions]


class _BinarySearch:
    """The first negative step of monotone labels over n steps, one probe at a time."""

    def __init__(self, n: int):
        self.lo, self.hi = 0, n

    @property
    def done(self) -> bool:
        return self.lo >= self.hi

    @property
    def probe(self) -> int:
        return (self.lo + self.hi) // 2

    def answer(self, positive: bool) -> None:
        if positive:
            self.lo = self.probe + 1
        else:
            self.hi = self.probe


def _remainder(rollout: Rollout, start: int) -> str:
    """The rollout's text after its first `start` steps (later steps and the answer line)."""
    head, marker, tail = rollout.text.rpartition(ANSWER_MARKER)
    answer_line = f"{ANSWER_MARKER}{tail}" if marker else ""
    return "\n".join([*rollout.steps[start:], answer_line]).strip("\n")


def _labelled(rollout: Rollout, labels: list[bool], evidence_at: Callable[[int], PrefixEvidence]) -> LabelledRollout:
    f = first_negative(labels)
    out = LabelledRollout(rollout, labels)
    if 0 < f < len(labels):
        out.pos_continuation = evidence_at(f - 1).good
        out.neg_continuation = evidence_at(f).bad
    return out


def reward_model_row(rollout: Rollout, labels: Sequence[bool]) -> tuple[list[str], list[bool]]:
    """A labelled rollout as a reward model's training row: its steps, then its answer line labelled
    with the rollout's correctness (grading.scored_steps). A correct answer is itself a good
    continuation of every prefix, so propagation turns every earlier label positive."""
    line = answer_line(rollout.text)
    if line is None:
        return list(rollout.steps), list(labels)
    return [*rollout.steps, line], propagate([*labels, rollout.correct])


def sorm_row(question: Question, labelled: LabelledRollout) -> dict | None:
    """A labelled rollout as the SORM's training row (TRL's layout: prompt, completions, labels),
    with the continuations the local refiner's pair is made of; None for a rollout with no step."""
    completions, labels = reward_model_row(labelled.rollout, labelled.labels)
    if not completions:
        return None
    return {"id": labelled.rollout.id, "problem_id": question.id, "prompt": question.question,
            "completions": completions, "labels": labels, "first_wrong": labelled.rollout.first_wrong,
            "pos_continuation": labelled.pos_continuation, "neg_continuation": labelled.neg_continuation}


def step_label_counts(label_rows: Iterable[Sequence[bool]]) -> Counter:
    """How many labels of each value sit at each step index: {(index, label): count}."""
    counts: Counter = Counter()
    for row in label_rows:
        counts.update((i, bool(label)) for i, label in enumerate(row))
    return counts


def balance_weights(counts: Mapping[tuple[int, bool], int]) -> dict[tuple[int, bool], float]:
    """A loss weight per (step index, label) that balances positives and negatives at every index
    without dropping a row: the n_i labels at index i keep their total weight n_i, split equally
    between the labels present there. The model then cannot learn "early steps are good" (the
    paper's reason to balance), and every label still trains it; cutting rows at the majority label
    kept 13% of the organism benchmark's PRM labels."""
    present: Counter = Counter(i for (i, _), n in counts.items() if n)
    totals: Counter = Counter()
    for (i, _), n in counts.items():
        totals[i] += n
    return {(i, label): totals[i] / (present[i] * n) for (i, label), n in counts.items() if n}


def is_heldout(question_id: str, share: float) -> bool:
    """Whether a question is in the held-out `share` of a set, by a stable hash of its id: the same
    on every node and run, and independent of the order rows arrive in."""
    return zlib.crc32(question_id.encode()) % 10_000 < share * 10_000


def row_weights(labels: Sequence[bool], weights: Mapping[tuple[int, bool], float]) -> list[float]:
    """A row's per-step loss weights (`balance_weights`)."""
    return [weights[(i, bool(label))] for i, label in enumerate(labels)]
