"""Problem loaders and the quarantine (glore_ray.core.problems), on the real GSM8K/SVAMP files and on
small malformed files."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import pytest

from glore_ray.core.grading import extract_answer, is_correct, render_solution, split_steps
from glore_ray.core.problems import (
    Problem,
    iter_gsm8k,
    iter_problems_jsonl,
    iter_svamp,
    load_problems,
)
from glore_ray.core.quarantine import MAX_RAW_CHARS, BadRecord, Quarantine
from glore_ray.io import open_text
from tests.conftest import SHARED_DATA


def shared_file(relative: str) -> Path:
    path = SHARED_DATA / relative
    assert path.is_file(), f"{path} not found; set GLORE_SHARED_DATA to the shared data directory"
    return path


def raw_records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


# --- the real files -------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "expected_count"), [("train", 7473), ("test", 1319)])
def test_every_gsm8k_gold_solution_loads_and_grades_correct(name: str, expected_count: int) -> None:
    path = shared_file(f"gsm8k/{name}.jsonl")
    quarantine = Quarantine()
    problems = list(iter_gsm8k(str(path), quarantine))
    records = raw_records(path)

    assert len(quarantine) == 0, quarantine.summary()
    assert len(problems) == len(records) == expected_count
    assert [p.id for p in problems[:2]] == [f"{name}-1", f"{name}-2"]
    for problem, record in zip(problems, records, strict=True):
        assert problem.question == record["question"].strip()
        assert extract_answer(record["answer"]) == problem.gold
        assert is_correct(problem.solution(), problem.gold), problem.id
        assert all("<<" not in step for step in problem.steps)


def test_gsm8k_keep_calculator_keeps_the_raw_steps() -> None:
    path = shared_file("gsm8k/test.jsonl")
    problems = iter_gsm8k(str(path), Quarantine(), keep_calculator=True, id_prefix="gsm8k-test")
    first = next(problems)
    assert first.id == "gsm8k-test-1"
    assert first.steps == tuple(split_steps(raw_records(path)[0]["answer"]))
    assert "<<16-3-4=9>>" in first.steps[0]


@pytest.mark.parametrize("name", ["train", "test"])
def test_render_solution_round_trips_real_gsm8k_answers(name: str) -> None:
    answers = [record["answer"] for record in raw_records(shared_file(f"gsm8k/{name}.jsonl"))]
    without_blank_lines = [answer for answer in answers if "\n\n" not in answer]
    assert len(without_blank_lines) > 0.99 * len(answers)
    for answer in without_blank_lines:
        assert render_solution(split_steps(answer), answer.rpartition("#### ")[2]) == answer


def test_every_svamp_answer_loads_and_grades_correct() -> None:
    path = shared_file("svamp/SVAMP.json")
    records = json.loads(path.read_text(encoding="utf-8"))
    quarantine = Quarantine()
    problems = list(iter_svamp(str(path), quarantine))

    assert len(quarantine) == 0, quarantine.summary()
    assert len(problems) == len(records)
    for problem, record in zip(problems, records, strict=True):
        assert problem.id == record["ID"]
        assert problem.steps == ()
        assert problem.gold == Fraction(repr(record["Answer"]))
        assert is_correct(problem.solution(), problem.gold), problem.id
        assert problem.question.startswith(record["Body"].strip())
        assert problem.question.endswith(record["Question"].strip())
    assert problems[0].question == ("Each pack of dvds costs 76 dollars. If there is a discount of 25 "
                                    "dollars on each pack. How much do you have to pay to buy each pack?")


@pytest.mark.parametrize(("relative", "count"), [("gsm8k/test.jsonl", 1319), ("svamp/SVAMP.json", None)])
def test_load_problems_detects_the_real_formats(relative: str, count: int | None) -> None:
    path = shared_file(relative)
    problems = list(load_problems(str(path)))
    assert len(problems) == (count or len(json.loads(path.read_text(encoding="utf-8"))))


# --- malformed records ----------------------------------------------------------------------

GOOD_GSM8K = {"question": "Tom has 2 apples and buys 3. How many?", "answer": "2+3=<<2+3=5>>5\n#### 5"}


def write_lines(path: Path, lines: list[str]) -> str:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def test_gsm8k_bad_records_are_quarantined_with_line_and_field(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "mixed.jsonl", [
        json.dumps(GOOD_GSM8K),                                         # 1
        "",                                                             # 2: blank, skipped
        json.dumps({"question": "q?"}),                                 # 3
        json.dumps({"question": "q?", "answer": "2+3=5\n5"}),           # 4
        json.dumps({"question": "q?", "answer": "2+3=5\n#### abc"}),    # 5
        '{"question": "q?", "answer": ',                                # 6
        json.dumps({"question": "Two?", "answer": "1+1=2\n#### 2"}),    # 7
        "[1, 2]",                                                       # 8
        json.dumps({"question": "q?", "answer": 5}),                    # 9
        json.dumps({"question": "  ", "answer": "#### 3"}),             # 10
    ])
    quarantine = Quarantine()
    problems = list(iter_gsm8k(path, quarantine))

    assert [(p.id, p.answer, p.steps) for p in problems] == [("mixed-1", "5", ("2+3=5",)),
                                                              ("mixed-7", "2", ("1+1=2",))]
    assert [(r.line, r.reason) for r in quarantine.records] == [
        (3, "missing field 'answer'"),
        (4, "no '####' answer line in field 'answer'"),
        (5, "non-numeric answer 'abc' in field 'answer'"),
        (6, "invalid JSON: Expecting value at column 30"),
        (8, "record is a JSON list, not an object"),
        (9, "field 'answer' must be a string, got int"),
        (10, "empty field 'question'"),
    ]
    assert len(problems) + len(quarantine) == 9  # every non-blank line is accounted for
    assert all(r.source == path for r in quarantine.records)
    assert quarantine.records[2].raw == json.dumps({"question": "q?", "answer": "2+3=5\n#### abc"})
    assert str(quarantine.records[0]) == f"{path}:3: missing field 'answer'"
    assert quarantine.summary().startswith(f"7 bad record(s) quarantined from 1 file(s); first: {path}:3:")


def test_quarantine_writes_every_bad_record(tmp_path: Path) -> None:
    quarantine = Quarantine()
    quarantine.add("a.jsonl", 3, "missing field 'answer'", '{"question": "q"}')
    quarantine.add("b.json", 7, "invalid JSON: Expecting value", "x" * (MAX_RAW_CHARS + 10))
    out = tmp_path / "reports" / "quarantine.jsonl"
    quarantine.write_jsonl(out)

    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert rows[0] == {"source": "a.jsonl", "line": 3, "reason": "missing field 'answer'",
                       "raw": '{"question": "q"}'}
    assert rows[1]["line"] == 7 and len(rows[1]["raw"]) == MAX_RAW_CHARS
    assert len(quarantine) == 2
    assert Quarantine().summary() == "no bad records"


SVAMP_TEXT = """\
[
    {"ID": "s-1", "Body": "Dan had $ 3. He got $ 4 more", "Question": "How much now?", "Answer": 7.0},
    {"ID": "s-2", "Body": "No answer here.", "Question": "What?"},
    {"ID": "s-3", "Body": "B.", "Question": "Q?", "Answer": "abc"},
    {"ID": "s-4", "Body": "Broken" "Question": "Q?", "Answer": 1.0},
    {
        "ID": "s-5",
        "Body": "Ann has 2.5 kg!",
        "Question": "How much is half?",
        "Equation": "( 2.5 / 2.0 )",
        "Answer": 1.25
    },
    7,
    {"ID": 6, "Body": "B.", "Question": "Q?", "Answer": 1.0},
    {"ID": "s-7", "Body": "B.", "Question": "Q?", "Answer": true}
]
"""


def test_svamp_bad_elements_are_quarantined_with_their_line(tmp_path: Path) -> None:
    path = tmp_path / "svamp.json"
    path.write_text(SVAMP_TEXT, encoding="utf-8")
    quarantine = Quarantine()
    problems = list(iter_svamp(str(path), quarantine))

    assert [(p.id, p.question, p.answer) for p in problems] == [
        ("s-1", "Dan had $ 3. He got $ 4 more. How much now?", "7"),
        ("s-5", "Ann has 2.5 kg! How much is half?", "1.25"),
    ]
    assert [(r.line, r.reason) for r in quarantine.records] == [
        (3, "missing field 'Answer'"),
        (4, "non-numeric answer 'abc' in field 'Answer'"),
        (5, "invalid JSON: Expecting ',' delimiter"),
        (13, "record is a JSON int, not an object"),
        (14, "field 'ID' must be a string, got int"),
        (15, "non-numeric answer True in field 'Answer'"),
    ]
    assert quarantine.records[2].raw == '{"ID": "s-4", "Body": "Broken" "Question": "Q?", "Answer": 1.0}'
    assert quarantine.records[0].raw == '{"ID": "s-2", "Body": "No answer here.", "Question": "What?"}'


def test_svamp_top_level_must_be_an_array(tmp_path: Path) -> None:
    path = tmp_path / "object.json"
    path.write_text('{"ID": "s-1"}', encoding="utf-8")
    with pytest.raises(ValueError, match="object.json"):
        list(iter_svamp(str(path), Quarantine()))


def test_problems_jsonl_round_trips_and_quarantines(tmp_path: Path) -> None:
    good = [Problem("p-1", "What is 2+3?", ("2+3=5",), "5"), Problem("p-2", "Half of 5?", (), "2.5")]
    path = write_lines(tmp_path / "problems.jsonl", [
        json.dumps(good[0].to_row()),
        json.dumps({**good[0].to_row(), "steps": "2+3=5"}),
        json.dumps({**good[0].to_row(), "answer": "five"}),
        json.dumps({"id": "p-9", "question": "q", "steps": []}),
        json.dumps({**good[0].to_row(), "steps": 5}),
        json.dumps(good[1].to_row()),
    ])
    quarantine = Quarantine()
    assert list(iter_problems_jsonl(path, quarantine)) == good
    assert [(r.line, r.reason) for r in quarantine.records] == [
        (2, "field 'steps' must be a list of strings"),
        (3, "non-numeric answer 'five' in field 'answer'"),
        (4, "missing field 'answer'"),
        (5, "field 'steps' must be a list of strings"),
    ]


def test_problems_parquet_streams_and_quarantines_rows(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    good = Problem("p-1", "What is 2+3?", ("2+3=5",), "5")
    rows = [good.to_row(), {**good.to_row(), "id": "p-2", "answer": "five"}, {**good.to_row(), "id": "p-3"}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "q.parquet")
    quarantine = Quarantine()
    loaded = list(load_problems(str(tmp_path / "q.parquet"), quarantine=quarantine))
    assert [p.id for p in loaded] == ["p-1", "p-3"]
    assert [(r.line, r.reason) for r in quarantine.records] == [(2, "non-numeric answer 'five' in field 'answer'")]
    assert quarantine.records[0].source.endswith("q.parquet")


def test_problem_row_round_trip() -> None:
    problem = Problem("p-1", "What is 2+3?", ("2+3=5", "so 5"), "5")
    row = problem.to_row()
    assert row == {"id": "p-1", "question": "What is 2+3?", "steps": ["2+3=5", "so 5"], "answer": "5"}
    assert Problem.from_row(row) == problem
    assert problem.gold == Fraction(5)
    assert problem.solution() == "2+3=5\nso 5\n#### 5"
    with pytest.raises(ValueError, match="non-numeric answer"):
        Problem("p-2", "q", (), "n/a")


def test_bad_record_raw_is_truncated() -> None:
    assert len(BadRecord("f", 1, "r", "y" * 5000).raw) == MAX_RAW_CHARS


# --- dispatch and URIs ----------------------------------------------------------------------

def test_load_problems_auto_detects_jsonl_formats(tmp_path: Path) -> None:
    gsm8k = write_lines(tmp_path / "gsm.jsonl", ["", json.dumps(GOOD_GSM8K)])
    ours = write_lines(tmp_path / "ours.jsonl", [json.dumps(Problem("p-1", "q", ("1+1=2",), "2").to_row())])
    empty = write_lines(tmp_path / "empty.jsonl", [""])

    assert [p.id for p in load_problems(gsm8k)] == ["gsm-2"]
    assert [p.id for p in load_problems(ours)] == ["p-1"]
    assert list(load_problems(empty)) == []


def test_load_problems_rejects_unknown_formats(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="gsm8k, svamp, problems, parquet, auto"):
        list(load_problems("x.jsonl", fmt="csv"))
    with pytest.raises(ValueError, match="pass fmt"):
        list(load_problems(write_lines(tmp_path / "p.txt", ["x"])))
    with pytest.raises(ValueError, match="pass fmt"):
        list(load_problems(write_lines(tmp_path / "other.jsonl", [json.dumps({"text": "x"})])))


def test_load_problems_without_quarantine_fails_on_the_first_bad_record(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "bad.jsonl", [json.dumps(GOOD_GSM8K), json.dumps({"question": "q?"}),
                                               json.dumps(GOOD_GSM8K)])
    loaded = []
    with pytest.raises(ValueError, match=r"bad.jsonl:2: missing field 'answer'"):
        for problem in load_problems(path):
            loaded.append(problem.id)
    assert loaded == ["bad-1"]

    quarantine = Quarantine()
    assert [p.id for p in load_problems(path, quarantine=quarantine)] == ["bad-1", "bad-3"]
    assert len(quarantine) == 1


def test_file_uri_loads_through_pyarrow(tmp_path: Path) -> None:
    gsm8k = tmp_path / "uri.jsonl"
    write_lines(gsm8k, [json.dumps(GOOD_GSM8K), "{broken"])
    svamp = tmp_path / "uri.json"
    svamp.write_text(SVAMP_TEXT, encoding="utf-8")

    with open_text(gsm8k.as_uri()) as file:
        assert type(file.buffer).__module__.startswith("pyarrow")  # not the local open() path
    quarantine = Quarantine()
    from_uri = list(load_problems(gsm8k.as_uri(), quarantine=quarantine))
    assert from_uri == list(load_problems(str(gsm8k), quarantine=Quarantine()))
    assert [p.id for p in from_uri] == ["uri-1"]
    assert [(r.source, r.line) for r in quarantine.records] == [(gsm8k.as_uri(), 2)]
    assert [p.id for p in load_problems(svamp.as_uri(), quarantine=Quarantine())] == ["s-1", "s-5"]


def test_count_rows_reads_parquet_footers_and_jsonl_lines_without_ray(tmp_path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from glore_ray.io import count_rows

    (tmp_path / "rows").mkdir()
    pq.write_table(pa.table({"id": ["a", "b", "c"]}), tmp_path / "rows" / "part-0.parquet")
    pq.write_table(pa.table({"id": ["d"]}), tmp_path / "rows" / "part-1.parquet")
    assert count_rows(str(tmp_path / "rows")) == 4
    assert count_rows((tmp_path / "rows").as_uri()) == 4  # a URI as the stages pass them
    (tmp_path / "sft.jsonl").write_text('{"id": 1}\n\n{"id": 2}\n')
    assert count_rows(str(tmp_path / "sft.jsonl")) == 2
