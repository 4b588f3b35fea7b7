"""Math word problems from GSM8K, SVAMP and our own JSONL, streamed from local paths or URIs.

Loaders never drop a malformed record silently: it goes into a Quarantine with its file, line
and the field at fault, and can be written out next to the run's results.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from glore_ray.core.grading import (
    ANSWER_MARKER,
    extract_answer,
    format_answer,
    parse_number,
    render_solution,
    split_steps,
    strip_calculator,
)
from glore_ray.core.quarantine import Quarantine
from glore_ray.io import file_path, filesystem_for, open_text

FORMATS = ("gsm8k", "svamp", "problems", "parquet", "auto")
_SENTENCE_END = (".", "!", "?")
# SVAMP files are pretty-printed arrays: after a malformed element, the next one starts on a new line.
_ELEMENT_START = re.compile(r"\n[ \t]*\{")


@dataclass(frozen=True)
class Problem:
    """A word problem with its gold solution; `answer` is canonical text (format_answer)."""

    id: str
    question: str
    steps: tuple[str, ...]
    """Gold reasoning steps; empty when the source has none (SVAMP)."""
    answer: str

    def __post_init__(self) -> None:
        if parse_number(self.answer) is None:
            raise ValueError(f"non-numeric answer {self.answer!r} in field 'answer'")

    @property
    def gold(self) -> Fraction:
        """The gold answer as an exact number."""
        value = parse_number(self.answer)
        assert value is not None  # checked in __post_init__
        return value

    def solution(self) -> str:
        """The gold solution text: steps, then `#### answer`."""
        return render_solution(self.steps, self.answer)

    def to_row(self) -> dict[str, Any]:
        """A row of plain types for JSON and Parquet."""
        return {"id": self.id, "question": self.question, "steps": list(self.steps), "answer": self.answer}

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Problem:
        """The inverse of to_row; steps may be any iterable of strings (Ray Data batches hold
        numpy arrays). Raises ValueError naming the field at fault."""
        raw_steps = _require(row, "steps")
        is_iterable = isinstance(raw_steps, Iterable) and not isinstance(raw_steps, str)
        steps = tuple(raw_steps) if is_iterable else None
        if steps is None or not all(isinstance(step, str) for step in steps):
            raise ValueError("field 'steps' must be a list of strings")
        return cls(id=_require_text(row, "id"), question=_require_text(row, "question"),
                   steps=steps, answer=_require_text(row, "answer"))


def iter_gsm8k(path: str, quarantine: Quarantine, keep_calculator: bool = False,
               id_prefix: str | None = None) -> Iterator[Problem]:
    """Stream GSM8K JSONL (`question`, `answer` = steps then `#### N`); ids are `{prefix}-{line}`
    with the file stem as default prefix. Calculator annotations are stripped unless kept."""
    prefix = file_path(path).stem if id_prefix is None else id_prefix

    def to_problem(record: object, line: int) -> Problem:
        obj = _require_object(record)
        question = _require_text(obj, "question")
        answer_text = _require_text(obj, "answer")
        if ANSWER_MARKER not in answer_text:
            raise ValueError(f"no '{ANSWER_MARKER}' answer line in field 'answer'")
        gold = extract_answer(answer_text)
        if gold is None:
            stated = answer_text.rpartition(ANSWER_MARKER)[2].strip()
            raise ValueError(f"non-numeric answer {stated!r} in field 'answer'")
        solution = answer_text if keep_calculator else strip_calculator(answer_text)
        return Problem(id=f"{prefix}-{line}", question=question.strip(),
                       steps=tuple(split_steps(solution)), answer=format_answer(gold))

    return _iter_jsonl(path, quarantine, to_problem)


def iter_problems_jsonl(path: str, quarantine: Quarantine) -> Iterator[Problem]:
    """Stream our own JSONL: one Problem.to_row() object per line."""
    return _iter_jsonl(path, quarantine, lambda record, _line: Problem.from_row(_require_object(record)))


def iter_problems_parquet(path: str, quarantine: Quarantine) -> Iterator[Problem]:
    """Stream our problems layout from a Parquet file, one row group batch at a time; a bad row is
    quarantined with its 1-based row number as its line."""
    import pyarrow.parquet as pq

    filesystem, target = filesystem_for(path)
    with filesystem.open_input_file(target) as source:
        row_no = 0
        for batch in pq.ParquetFile(source).iter_batches(batch_size=4096):
            for record in batch.to_pylist():
                row_no += 1
                try:
                    yield Problem.from_row(record)
                except ValueError as error:
                    quarantine.add(path, row_no, str(error), json.dumps(record, default=str))


def iter_svamp(path: str, quarantine: Quarantine) -> Iterator[Problem]:
    """Problems from a SVAMP JSON array of {ID, Body, Question, Answer[, Equation]} objects.

    The question is Body (closed with a period if it lacks a sentence end) + " " + Question; SVAMP
    has no gold steps. The array is decoded element by element so that a malformed element is
    quarantined with its line and the rest still load. Raises ValueError if the top level is not
    an array.
    """
    with open_text(path) as file:
        text = file.read()
    decoder = json.JSONDecoder()
    idx = _skip_space(text, 0)
    if not text.startswith("[", idx):
        raise ValueError(f"{path}: SVAMP file must hold a JSON array of problems")
    idx = _skip_space(text, idx + 1)
    line, counted_to = 1, 0
    while not text.startswith("]", idx):
        if idx >= len(text):
            raise ValueError(f"{path}: unterminated JSON array")
        line += text.count("\n", counted_to, idx)
        counted_to = idx
        try:
            record, end = decoder.raw_decode(text, idx)
        except json.JSONDecodeError as error:
            end = _next_element(text, idx)
            quarantine.add(path, line, f"invalid JSON: {error.msg}", text[idx:end].rstrip().rstrip(","))
        else:
            try:
                problem = _svamp_problem(record)
            except ValueError as error:
                quarantine.add(path, line, str(error), text[idx:end])
            else:
                yield problem
        idx = _skip_space(text, end)
        if text.startswith(",", idx):
            idx = _skip_space(text, idx + 1)


def load_problems(path: str, fmt: str = "auto", quarantine: Quarantine | None = None,
                  keep_calculator: bool = False) -> Iterator[Problem]:
    """Stream problems from `path` in `fmt` (one of FORMATS); `keep_calculator` applies to GSM8K.

    `auto` picks svamp for `.json`, our problems layout in Parquet for `.parquet`, and for `.jsonl`
    looks at the first record: `steps` -> our problems format, `question` and `answer` -> gsm8k.
    Bad records go to `quarantine`; without one, the first bad record raises ValueError so that
    none is lost unnoticed.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown problem format {fmt!r}; valid: {', '.join(FORMATS)}")
    if fmt == "auto":
        detected = _detect_format(path)
        if detected is None:  # an empty JSONL file holds no problems in any format
            return
        fmt = detected
    strict = quarantine is None
    sink = Quarantine() if quarantine is None else quarantine
    problems = (iter_gsm8k(path, sink, keep_calculator) if fmt == "gsm8k"
                else iter_svamp(path, sink) if fmt == "svamp"
                else iter_problems_parquet(path, sink) if fmt == "parquet"
                else iter_problems_jsonl(path, sink))
    for problem in problems:
        if strict and sink:  # loaders quarantine a bad record before yielding the next good one
            break
        yield problem
    if strict and sink:
        raise ValueError(f"bad record {sink.records[0]} (pass a Quarantine to collect bad records)")


def _detect_format(path: str) -> str | None:
    """The format of `path` for load_problems(fmt="auto"); None for a JSONL file with no records."""
    suffix = file_path(path).suffix
    if suffix == ".json":
        return "svamp"
    if suffix == ".parquet":
        return "parquet"
    if suffix != ".jsonl":
        raise ValueError(f"{path}: cannot detect the format of a {suffix or 'suffix-less'} file; pass fmt")
    with open_text(path) as file:
        first = next((line for line in file if line.strip()), None)
    if first is None:
        return None
    try:
        record = json.loads(first)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: first record is invalid JSON ({error.msg}); pass fmt") from error
    if isinstance(record, dict) and "steps" in record:
        return "problems"
    if isinstance(record, dict) and "question" in record and "answer" in record:
        return "gsm8k"
    raise ValueError(f"{path}: first record has neither 'steps' nor 'question' and 'answer'; pass fmt")


def _iter_jsonl(path: str, quarantine: Quarantine,
                to_problem: Callable[[object, int], Problem]) -> Iterator[Problem]:
    """Stream one problem per non-blank line, quarantining lines that fail to decode or convert."""
    with open_text(path) as file:
        for line_no, line in enumerate(file, start=1):
            if not line.strip():
                continue
            record_text = line.rstrip("\n")  # so that error columns count within this line
            try:
                problem = to_problem(json.loads(record_text), line_no)
            except json.JSONDecodeError as error:
                reason = f"invalid JSON: {error.msg} at column {error.colno}"
                quarantine.add(path, line_no, reason, record_text)
            except ValueError as error:
                quarantine.add(path, line_no, str(error), record_text)
            else:
                yield problem


def _svamp_problem(record: object) -> Problem:
    obj = _require_object(record)
    problem_id = _require_text(obj, "ID")
    body = _require_text(obj, "Body").strip()
    question = _require_text(obj, "Question").strip()
    answer = _require(obj, "Answer")
    # bool is an int subclass; str() of an int or float is exact decimal text (51.0, 1e-05).
    gold = None if isinstance(answer, bool) else parse_number(str(answer))
    if gold is None:
        raise ValueError(f"non-numeric answer {answer!r} in field 'Answer'")
    if not body.endswith(_SENTENCE_END):
        body += "."
    return Problem(id=problem_id, question=f"{body} {question}", steps=(), answer=format_answer(gold))


def _require_object(record: object) -> Mapping[str, Any]:
    if not isinstance(record, dict):
        raise ValueError(f"record is a JSON {type(record).__name__}, not an object")
    return record


def _require(obj: Mapping[str, Any], name: str) -> Any:
    if name not in obj:
        raise ValueError(f"missing field {name!r}")
    return obj[name]


def _require_text(obj: Mapping[str, Any], name: str) -> str:
    value = _require(obj, name)
    if not isinstance(value, str):
        raise ValueError(f"field {name!r} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise ValueError(f"empty field {name!r}")
    return value


def _next_element(text: str, idx: int) -> int:
    """Where the array element after the malformed one at `idx` starts (or the closing bracket)."""
    match = _ELEMENT_START.search(text, idx + 1)
    if match is not None:
        return match.end() - 1
    closing = text.rfind("]")
    return closing if closing > idx else len(text)


def _skip_space(text: str, idx: int) -> int:
    while idx < len(text) and text[idx].isspace():
        idx += 1
    return idx
