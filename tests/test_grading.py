"""Answer extraction, numeric grading and step splitting (glore_ray.core.grading)."""

from __future__ import annotations

from fractions import Fraction

import pytest

from glore_ray.core.grading import (
    answers_match,
    extract_answer,
    format_answer,
    good_steps,
    is_correct,
    parse_number,
    render_solution,
    scored_steps,
    split_steps,
    strip_calculator,
)


@pytest.mark.parametrize(
    ("solution", "expected"),
    [
        ("#### 18", Fraction(18)),
        ("####18", Fraction(18)),
        ("  ####   18  \n", Fraction(18)),
        ("#### 1,080", Fraction(1080)),
        ("#### 1,450,000", Fraction(1450000)),
        ("#### $18", Fraction(18)),
        ("#### $ 18", Fraction(18)),
        ("#### 18 dollars", Fraction(18)),
        ("#### $18.", Fraction(18)),
        ("#### The answer is 18 apples.", Fraction(18)),
        ("#### 0.5", Fraction(1, 2)),
        ("#### .5", Fraction(1, 2)),
        ("#### 2.50", Fraction(5, 2)),
        ("#### 1,234.5", Fraction(2469, 2)),
        ("#### 0.1", Fraction(1, 10)),  # exact, not the binary float 0.1
        ("#### -3", Fraction(-3)),
        ("#### - 3", Fraction(-3)),  # nothing precedes the first number: the dash is a sign
        ("#### -$3", Fraction(-3)),
        ("#### −3", Fraction(-3)),  # Unicode minus
        ("#### x-3", Fraction(3)),  # a hyphen inside a word is not a sign
        ("#### 5 - 3", Fraction(5)),  # the first number wins
        ("#### 50%", Fraction(50)),
        ("#### 12,34", Fraction(12)),  # not a thousands group
        ("steps\n#### 4\nmore\n#### 7", Fraction(7)),  # last marker wins
        ("Janet sells 9 eggs.\nShe makes $18.\n#### 18", Fraction(18)),
        ("She makes 18 dollars.", None),  # no marker: no answer, even with a number
        ("", None),
        ("#### ", None),
        ("#### eighteen", None),
        ("#### \n18", None),  # only the marker's own line is the answer
        ("#### 5\n####", None),  # the last marker has no number
    ],
)
def test_extract_answer(solution: str, expected: Fraction | None) -> None:
    assert extract_answer(solution) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("51.0", Fraction(51)),
        ("51", Fraction(51)),
        ("1e-05", Fraction(1, 100000)),  # str() of a small float
        ("2.5E3", Fraction(2500)),
        ("1,000 people", Fraction(1000)),
        ("costs $ 3 each", Fraction(3)),
        ("-0.75", Fraction(-3, 4)),
        ("nan", None),
        ("abc", None),
    ],
)
def test_parse_number(text: str, expected: Fraction | None) -> None:
    assert parse_number(text) == expected


def test_answers_match_is_exact_for_integers_and_tolerant_for_rounded_decimals() -> None:
    assert answers_match(Fraction(18), Fraction(18))
    assert answers_match(Fraction("0.333333"), Fraction(1, 3))
    assert not answers_match(Fraction(1000001), Fraction(1000000))
    assert not answers_match(Fraction(192000100), Fraction(192000000))
    assert not answers_match(Fraction("0.33333"), Fraction(1, 3))
    assert not answers_match(Fraction(17), Fraction(18))
    assert not answers_match(Fraction(-18), Fraction(18))
    assert not answers_match(Fraction(1, 10**7), Fraction(0))
    assert answers_match(Fraction(0), Fraction(0))
    assert not answers_match(None, Fraction(0))


def test_is_correct() -> None:
    assert is_correct("2 + 3 = 5\n#### 5", Fraction(5))
    assert is_correct("#### 1,080 dollars", Fraction(1080))
    assert not is_correct("2 + 3 = 5\n#### 6", Fraction(5))
    assert not is_correct("2 + 3 = 5", Fraction(5))


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (Fraction(18), "18"),
        (Fraction(-3), "-3"),
        (Fraction(0), "0"),
        (Fraction(5, 2), "2.5"),
        (Fraction(-1, 8), "-0.125"),
        (Fraction(1, 1024), "0.0009765625"),  # finite decimals are exact, however long
        (Fraction(10**20), "100000000000000000000"),
        (Fraction(1, 3), "0.333333"),
        (Fraction(2, 3), "0.666667"),
        (Fraction(-7, 3), "-2.333333"),
        (Fraction(1, 6 * 10**7), "0"),  # rounds to zero, without a "-0"
        (Fraction(-1, 6 * 10**7), "0"),
    ],
)
def test_format_answer(value: Fraction, text: str) -> None:
    assert format_answer(value) == text


@pytest.mark.parametrize("value", [Fraction(18), Fraction(-3), Fraction(5, 2), Fraction(1, 3),
                                   Fraction(-7, 3)])
def test_format_answer_parses_back_to_a_matching_answer(value: Fraction) -> None:
    assert answers_match(parse_number(format_answer(value)), value)


def test_split_steps_drops_blank_lines_and_the_answer() -> None:
    solution = "  First 2+2=4.\n\nThen 4*2=8.  \n#### 8\nextra talk 9"
    assert split_steps(solution) == ["First 2+2=4.", "Then 4*2=8."]


def test_split_steps_keeps_text_before_the_marker_on_the_answer_line() -> None:
    assert split_steps("a\nSo it is 8. #### 8") == ["a", "So it is 8."]


def test_split_steps_without_marker_is_every_line() -> None:
    assert split_steps("a\n b \n") == ["a", "b"]
    assert split_steps("#### 3") == []


def test_render_solution_inverts_split_steps() -> None:
    solution = ("Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs a day.\n"
                "She makes 9 * 2 = $<<9*2=18>>18.\n#### 18")
    steps = split_steps(solution)
    assert render_solution(steps, "18") == solution
    assert render_solution(tuple(steps), "18") == solution
    assert extract_answer(render_solution(steps, "18")) == Fraction(18)


def test_render_solution_without_steps_is_the_answer_line() -> None:
    assert render_solution([], "51") == "#### 51"
    assert split_steps(render_solution([], "51")) == []


def test_strip_calculator() -> None:
    text = "He sprints 3*3=<<3*3=9>>9 times and 48/2=<<48/2=24>>24 laps"
    assert strip_calculator(text) == "He sprints 3*3=9 times and 48/2=24 laps"
    assert strip_calculator("no annotations <here>") == "no annotations <here>"
    assert strip_calculator("11 - 20 = <<11-20=-9>>-9") == "11 - 20 = -9"


def test_scored_steps_end_with_the_answer_line() -> None:
    assert scored_steps("a\nb\n#### 1,080 apples\n") == ["a", "b", "#### 1,080 apples"]
    assert scored_steps("a\nSo 8. #### 8") == ["a", "So 8.", "#### 8"]
    assert scored_steps("a\nb") == ["a", "b"]  # unfinished: nothing to read an answer from
    assert scored_steps("a\n#### 8") != scored_steps("a\n#### 9")


@pytest.mark.parametrize("first_wrong, n_steps, good", [
    (None, 3, [True, True, True]), (0, 3, [False, False, False]), (1, 3, [True, False, False]), (3, 3, [True] * 3)])
def test_a_step_is_good_iff_it_comes_before_the_first_wrong_one(first_wrong, n_steps, good) -> None:
    assert good_steps(first_wrong, n_steps) == good
