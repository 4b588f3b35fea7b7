"""Final answers and reasoning steps of GSM8K-style solutions.

A solution is reasoning steps, one per line, then an answer line `#### N`. Answers are compared
as exact Fractions (never floats), so `1,080`, `$1080.` and `1080.0` are the same answer.
"""

from __future__ import annotations

import re
from fractions import Fraction

ANSWER_MARKER = "####"

REL_TOL = Fraction(1, 10**6)
"""Relative tolerance of answers_match for non-integers: 0.333333 still matches 1/3. Integers
compare exactly, or a guess within ±192 of 192,000,000 would count as right."""

NONTERMINATING_PLACES = 6
"""Decimals format_answer keeps for a fraction with no finite decimal form (1/3 -> 0.333333)."""

_NUMBER = re.compile(
    r"""
    (?:(?<!\w)(?P<minus>[-−])\s*)?    # a sign, but not a hyphen inside a word ("COVID-19")
    (?:\$\s*)?
    (?P<number>
        (?:[0-9]{1,3}(?:,[0-9]{3})+(?![0-9])|[0-9]+)(?:\.[0-9]+)?   # 1,234.5 / 1234.5
        |\.[0-9]+                                                  # .5
    )
    (?P<exponent>[eE][-+]?[0-9]+)?    # str() of a float: 1e-05
    """,
    re.VERBOSE,
)
_CALCULATOR = re.compile(r"<<[^<>]*>>")


def parse_number(text: str) -> Fraction | None:
    """The first number in `text` as an exact Fraction, or None if there is none.

    Tolerates thousands commas, `$`, units and words around the number, a trailing period and
    `%` ("50%" is 50: GSM8K states percentages as the number of percent). A minus sign counts
    when it is attached (`-3`) or separated only by spaces or `$` (`- 3`, `-$3`): nothing numeric
    precedes the first number, so the dash cannot be a subtraction. A hyphen inside a word
    (`x-3`) is not a sign.
    """
    match = _NUMBER.search(text)
    if match is None:
        return None
    value = Fraction(match["number"].replace(",", "") + (match["exponent"] or ""))
    return -value if match["minus"] else value


def extract_answer(solution: str) -> Fraction | None:
    """The final answer: the first number on the line after the LAST `####` marker.

    A solution without the marker has no answer (None), even if it ends in a number: our prompts
    require the marker, and guessing from the last number would credit unfinished solutions.
    Only the marker's own line is read, so a bare `####` followed by more steps is no answer.
    """
    _, marker, tail = solution.rpartition(ANSWER_MARKER)
    if not marker:
        return None
    return parse_number(tail.split("\n", 1)[0])


def answers_match(predicted: Fraction | None, gold: Fraction) -> bool:
    """Whether `predicted` equals `gold`: exactly when both are integers, else up to a relative
    tolerance of REL_TOL (rounded repeating decimals); None never matches."""
    if predicted is None:
        return False
    if predicted.denominator == 1 and gold.denominator == 1:
        return predicted == gold
    return abs(predicted - gold) <= REL_TOL * max(abs(predicted), abs(gold))


def is_correct(solution: str, gold: Fraction) -> bool:
    """Whether the final answer of `solution` matches `gold`."""
    return answers_match(extract_answer(solution), gold)


def split_steps(solution: str) -> list[str]:
    """The reasoning steps: non-empty lines, stripped, before the last `####` marker.

    Text before the marker on the answer line is kept as a step ("So 18. #### 18" -> "So 18.");
    the answer and anything after it are dropped.
    """
    head, marker, _ = solution.rpartition(ANSWER_MARKER)
    body = head if marker else solution
    return [line.strip() for line in body.splitlines() if line.strip()]


def answer_line(solution: str) -> str | None:
    """The answer line as written (`#### 18`), or None without the marker."""
    _, marker, tail = solution.rpartition(ANSWER_MARKER)
    if not marker:
        return None
    answer = tail.split("\n", 1)[0].strip()
    return f"{ANSWER_MARKER} {answer}".rstrip()


def scored_steps(solution: str) -> list[str]:
    """What a reward model scores: the reasoning steps, then the answer line when there is one.
    Scoring the answer line tells apart two solutions with the same steps and different answers;
    its label is the solution's correctness."""
    line = answer_line(solution)
    return split_steps(solution) + ([line] if line is not None else [])


def good_steps(first_wrong: int | None, n_steps: int) -> list[bool]:
    """Exact step truth: a step is good iff it comes before the first wrong one (None: no wrong
    step). The PRM's labels, and what every step label is scored against."""
    return [first_wrong is None or i < first_wrong for i in range(n_steps)]


def strip_calculator(text: str) -> str:
    """`text` without GSM8K calculator annotations (`<<48/2=24>>`)."""
    return _CALCULATOR.sub("", text)


def render_solution(steps: list[str] | tuple[str, ...], answer: str) -> str:
    """Steps one per line, then `#### answer`: the inverse of split_steps plus extract_answer."""
    answer_line = f"{ANSWER_MARKER} {answer}"
    return "\n".join([*steps, answer_line])


def format_answer(value: Fraction) -> str:
    """Canonical text of a number: "18", "-3", "2.5"; a fraction with no finite decimal form is
    rounded to NONTERMINATING_PLACES decimals, trailing zeros stripped (1/3 -> "0.333333")."""
    places = _decimal_places(value.denominator)
    if places is None:
        places = NONTERMINATING_PLACES
    # Exact for finite decimals; otherwise no tie can occur, so the rounding mode is irrelevant.
    scaled = round(value * 10**places)
    whole, fraction = divmod(abs(scaled), 10**places)
    sign = "-" if scaled < 0 else ""
    decimals = str(fraction).rjust(places, "0").rstrip("0") if places else ""
    return f"{sign}{whole}.{decimals}" if decimals else f"{sign}{whole}"


def _decimal_places(denominator: int) -> int | None:
    """Decimals needed to write 1/denominator exactly, or None if it has no finite decimal form."""
    twos = fives = 0
    while denominator % 2 == 0:
        denominator //= 2
        twos += 1
    while denominator % 5 == 0:
        denominator //= 5
        fives += 1
    return max(twos, fives) if denominator == 1 else None


_NUMBER_TEXT = r"-?\d[\d,]*(?:\.\d+)?"


def step_result(step: str) -> Fraction | None:
    """The intermediate result a step produces: its last number (`... 3 * 4 = 12 boxes.` -> 12);
    None for a step without numbers."""
    numbers = re.findall(_NUMBER_TEXT, step)
    return parse_number(numbers[-1]) if numbers else None


def step_operands(step: str) -> list[Fraction]:
    """The numbers a step uses: every number in it but its result (its last number)."""
    return [parse_number(n) for n in re.findall(_NUMBER_TEXT, step)[:-1]]


def uses_result(continuation: str, result: Fraction | None) -> bool:
    """Whether a continuation uses an intermediate result: as an operand of one of its steps or as
    its final answer. Being present is not enough: a step that recomputes the number as its own
    result, or restates it, has not used it. A prefix whose last step has no number imposes nothing."""
    if result is None:
        return True
    if answers_match(extract_answer(continuation), result):
        return True
    return any(answers_match(n, result) for step in split_steps(continuation) for n in step_operands(step))
