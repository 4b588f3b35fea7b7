"""The model organism: multi-step arithmetic word problems in GSM8K's format, with an exact checker.

We generate the problems, so we know every valid step: the first wrong step of *any* solution is
exact ground truth, which GSM8K can only approximate. Problems mix operand-choice traps (facts
stated before they are needed, "how many more" in either direction, distractor numbers) with
3-digit carries, so a tiny model trained for minutes is right often but not always.

A gold step is `<words> a <op> b = c <unit>.`; a solution step is valid iff it has such an
equation, its operands are numbers of the question or results of earlier steps, the arithmetic is
right, and it is one of the problem's plan steps (same operation on the same values; + and * in
either order; independent plan steps in any order). An algebraically equivalent route through
other intermediate values (netting a purchase and a sale first) counts as `wrong_plan`: validity
is judged against the problem's plan, the structure the policy is taught. Pure Python: no ray,
torch or vllm.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction

from glore_ray.config.data import OrganismConfig
from glore_ray.core.grading import answers_match, extract_answer, is_correct, split_steps
from glore_ray.core.problems import Problem

NAMES = ["Ava", "Ben", "Cara", "Dan", "Eli", "Fay", "Gus", "Hana", "Ivan", "Jade", "Kai", "Lena",
         "Milo", "Nora", "Omar", "Pia", "Quinn", "Rosa", "Sam", "Tess", "Umar", "Vera", "Wes", "Zoe"]
ITEMS = ["apples", "marbles", "stickers", "cookies", "pencils", "shells", "stamps", "coins",
         "cards", "beads", "eggs", "books", "toys", "buttons", "flowers"]
CONTAINERS = ["boxes", "bags", "packs", "jars", "crates", "baskets"]
DISTRACTORS = ["{Q} is {z} years old.", "{Q} lives {z} miles away.", "{Q} has {z} pets.",
               "The store is open {z} hours a day.", "{Q} read {z} pages yesterday."]

_EQUATION = re.compile(r"(-?\d+(?:\.\d+)?)\s*([-+*/×x])\s*(-?\d+(?:\.\d+)?)\s*=\s*(-?\d+(?:\.\d+)?)")
_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b,
        "/": lambda a, b: a / b if b else None}


@dataclass(frozen=True)
class Equation:
    a: Fraction
    op: str
    b: Fraction
    result: Fraction

    def same_operation(self, other: Equation) -> bool:
        if self.op != other.op:
            return False
        if self.op in "+*":
            return sorted((self.a, self.b)) == sorted((other.a, other.b))
        return (self.a, self.b) == (other.a, other.b)


def parse_equations(step: str) -> list[Equation] | None:
    """Every `a op b = c` of a step (`x` and `×` read as `*`); None when the step has none, or an
    `=` that belongs to no such equation (a chain like `a + b = c + d = e` hides its second result)."""
    text = step.replace(",", "")
    matches = _EQUATION.findall(text)
    if not matches or text.count("=") != len(matches):
        return None
    return [Equation(Fraction(a), "*" if op in "x×" else op, Fraction(b), Fraction(c)) for a, op, b, c in matches]


def parse_equation(step: str) -> Equation | None:
    """The single equation of a gold step, or None."""
    equations = parse_equations(step)
    return equations[0] if equations and len(equations) == 1 else None


@dataclass(frozen=True)
class StepCheck:
    """Where a solution first goes wrong.

    `first_wrong` is a 0-based index into the solution's steps; `len(steps)` means every step is
    valid but the `#### answer` line is wrong or missing; None means the solution is right.
    """

    first_wrong: int | None
    kind: str | None
    """arithmetic | unknown_operand | wrong_plan | no_equation | wrong_answer | no_answer"""


def check_solution(problem: Problem, solution: str) -> StepCheck:
    """Exact first wrong step of `solution` for an organism `problem` (see the module docstring)."""
    plan = [parse_equation(s) for s in problem.steps]
    if any(eq is None for eq in plan):
        raise ValueError(f"problem {problem.id}: a gold step has no equation; not an organism problem")
    available = {Fraction(n) for n in _NUMBER.findall(problem.question.replace(",", ""))}
    steps = split_steps(solution)
    for i, step in enumerate(steps):
        equations = parse_equations(step)
        if equations is None:
            return StepCheck(i, "no_equation")
        for eq in equations:
            if eq.a not in available or eq.b not in available:
                return StepCheck(i, "unknown_operand")
            if _OPS[eq.op](eq.a, eq.b) != eq.result:
                return StepCheck(i, "arithmetic")
            if not any(eq.same_operation(g) for g in plan):
                return StepCheck(i, "wrong_plan")
            available.add(eq.result)
    answer = extract_answer(solution)
    if answer is None:
        return StepCheck(len(steps), "no_answer")
    if not answers_match(answer, problem.gold):
        return StepCheck(len(steps), "wrong_answer")
    return StepCheck(None, None)


class _Redraw(Exception):
    """The random draw violates a constraint (range, divisibility): draw the problem again."""


class _Story:
    """Sentences, gold steps and the running total of one problem while it is drawn."""

    def __init__(self, rng: random.Random, cfg: OrganismConfig):
        self.rng, self.cfg = rng, cfg
        self.hero, self.other, self.third = rng.sample(NAMES, 3)
        self.item = rng.choice(ITEMS)
        self.containers = rng.sample(CONTAINERS, len(CONTAINERS))  # one kind per group: no ambiguity
        self.facts: list[str] = []  # sentences that may move to the front of the problem
        self.sentences: list[str] = []
        self.steps: list[str] = []
        self.total = 0
        self.question = ""

    def num(self, lo: int, hi: int | None = None) -> int:
        return self.rng.randint(lo, hi if hi is not None else self.cfg.max_operand)

    def result(self, value: int | Fraction) -> int:
        if value != int(value) or not 1 <= value <= self.cfg.max_result:
            raise _Redraw
        return int(value)

    def group(self, verb: str) -> int:
        count, size, container = self.num(2, 9), self.num(2, self.cfg.max_factor), self.containers.pop()
        fact = f"Each of the {container} holds {size} {self.item}."
        self.facts.append(fact)
        self.sentences.append(f"{self.hero} {verb} {count} {container} of {self.item}.")
        if self.rng.random() < 0.5:  # the fact follows its use; otherwise it moves to the front
            self.sentences.append(fact)
            self.facts.pop()
        g = self.result(count * size)
        self.steps.append(f"The {container} hold {count} * {size} = {g} {self.item}.")
        return g

    # Openings set the running total.
    def start_have(self) -> None:
        self.total = self.num(5)
        self.sentences.append(f"{self.hero} has {self.total} {self.item}.")

    def start_boxes(self) -> None:
        self.total = self.group("has")

    # Events change the running total (1 or 2 steps).
    def find(self) -> None:
        x = self.num(2)
        self.sentences.append(f"Then {self.hero} finds {x} more {self.item}.")
        self.total = self.result(self.total + x)
        self.steps.append(f"{self.hero} now has {self.total - x} + {x} = {self.total} {self.item}.")

    def give(self) -> None:
        if self.total < 3:
            raise _Redraw
        x = self.num(1, min(self.total - 1, self.cfg.max_operand))
        self.sentences.append(f"{self.hero} gives {x} {self.item} to {self.other}.")
        before, self.total = self.total, self.result(self.total - x)
        self.steps.append(f"{self.hero} now has {before} - {x} = {self.total} {self.item}.")

    def buy_groups(self) -> None:
        g = self.group("buys")
        before, self.total = self.total, self.result(self.total + g)
        self.steps.append(f"{self.hero} now has {before} + {g} = {self.total} {self.item}.")

    def sell_groups(self) -> None:
        g = self.group("sells")
        before, self.total = self.total, self.result(self.total - g)
        self.steps.append(f"{self.hero} now has {before} - {g} = {self.total} {self.item}.")

    # Endings ask the question (0 or 1 step).
    def ask_total(self) -> None:
        self.question = f"How many {self.item} does {self.hero} have now?"

    def times(self) -> None:
        k = self.num(2, 3)
        self.sentences.append(f"{self.other} has {k} times as many {self.item} as {self.hero}.")
        c = self.result(k * self.total)
        self.steps.append(f"{self.other} has {k} * {self.total} = {c} {self.item}.")
        self.question = f"How many {self.item} does {self.other} have?"

    def share(self) -> None:
        divisors = [k for k in range(2, 6) if self.total % k == 0]
        if not divisors:
            raise _Redraw
        k = self.rng.choice(divisors)
        self.sentences.append(f"{self.hero} shares the {self.item} equally among {k} friends.")
        c = self.result(Fraction(self.total, k))
        self.steps.append(f"Each friend gets {self.total} / {k} = {c} {self.item}.")
        self.question = f"How many {self.item} does each friend get?"

    def compare(self) -> None:
        y = self.num(1, self.cfg.max_result)
        if y == self.total:
            raise _Redraw
        self.sentences.append(f"{self.third} has {y} {self.item}.")
        if y > self.total:
            d = self.result(y - self.total)
            self.steps.append(f"{self.third} has {y} - {self.total} = {d} more {self.item} than {self.hero}.")
            self.question = f"How many more {self.item} does {self.third} have than {self.hero}?"
        else:
            d = self.result(self.total - y)
            self.steps.append(f"{self.hero} has {self.total} - {y} = {d} more {self.item} than {self.third}.")
            self.question = f"How many more {self.item} does {self.hero} have than {self.third}?"

    def distract(self) -> None:
        template = self.rng.choice(DISTRACTORS)
        name = self.rng.choice([n for n in NAMES if n not in (self.hero, self.other, self.third)])
        sentence = template.format(Q=name, z=self.num(2, 99))
        self.sentences.insert(self.rng.randint(0, len(self.sentences)), sentence)

    def text(self) -> str:
        return " ".join(self.facts + self.sentences + [self.question])


def _draw(rng: random.Random, cfg: OrganismConfig, n_steps: int) -> _Story:
    story = _Story(rng, cfg)
    ending = rng.choice([story.ask_total, story.times, story.share, story.compare])
    budget = n_steps - (ending != story.ask_total)
    opening = story.start_boxes if rng.random() < 0.4 else story.start_have
    opening()
    budget -= opening == story.start_boxes
    while budget > 0:
        events = [story.find, story.give] + ([story.buy_groups, story.sell_groups] if budget >= 2 else [])
        event = rng.choice(events)
        event()
        budget -= 2 if event in (story.buy_groups, story.sell_groups) else 1
    ending()
    if rng.random() < cfg.distractor_prob:
        story.distract()
    return story


ID_PREFIX = "organism:"
"""File loaders name records `<stem>-<line>`; no file can produce this prefix."""


def is_organism_problem(problem: Problem) -> bool:
    """The exact checker applies to problems this module generated."""
    return problem.id.startswith(ID_PREFIX)


@dataclass(frozen=True)
class Grade:
    """A solution graded against its problem: right or wrong everywhere, and on the model organism
    (exact step truth) where it first goes wrong and how; None elsewhere."""

    correct: bool
    first_wrong: int | None = None
    kind: str | None = None


def grade(problem: Problem, text: str) -> Grade:
    """The one grading of a solution: by its final answer, and by the exact checker where it applies."""
    check = check_solution(problem, text) if is_organism_problem(problem) else None
    return Grade(is_correct(text, problem.gold), check and check.first_wrong, check and check.kind)


def make_problem(cfg: OrganismConfig, split: str, index: int) -> Problem:
    """Problem `index` of `split`: a function of (seed, split, index) only, so any shard of a
    split can be generated independently and splits never share a random stream."""
    rng = random.Random(f"glore-organism/{cfg.seed}/{split}/{index}")
    # Drawn once: redrawing it on rejection would favour short problems (long ones fail more often).
    n_steps = rng.randint(cfg.min_steps, cfg.max_steps)
    while True:
        try:
            story = _draw(rng, cfg, n_steps)
            break
        except _Redraw:
            continue
    last = parse_equation(story.steps[-1])
    return Problem(id=f"{ID_PREFIX}{split}:{index}", question=story.text(), steps=tuple(story.steps),
                   answer=str(int(last.result)))


def generate(cfg: OrganismConfig, split: str, n: int | None = None, start: int = 0) -> Iterator[Problem]:
    """Stream problems `start .. start+n` of a split (`n` defaults to the split's configured size)."""
    if n is None:
        n = {"train": cfg.n_train, "validation": cfg.n_validation, "test": cfg.n_test}[split]
    for index in range(start, start + n):
        yield make_problem(cfg, split, index)
