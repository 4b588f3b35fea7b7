"""Bad input records, kept rather than dropped: each with its file, line and the field at fault,
written out next to the run's results so that it can be inspected and fixed."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from glore_ray.io import write_jsonl

MAX_RAW_CHARS = 2000
"""A bad record's text is kept up to this many characters."""


@dataclass
class BadRecord:
    """A record that could not be loaded, kept so that it can be inspected and fixed."""

    source: str
    """File path or URI."""
    line: int
    """1-based line where the record starts."""
    reason: str
    """What is wrong, naming the field at fault."""
    raw: str
    """The record's text, truncated to MAX_RAW_CHARS."""

    def __post_init__(self) -> None:
        self.raw = self.raw[:MAX_RAW_CHARS]

    def __str__(self) -> str:
        return f"{self.source}:{self.line}: {self.reason}"


@dataclass
class Quarantine:
    """The bad records met while loading, in the order they were met."""

    records: list[BadRecord] = field(default_factory=list)

    def add(self, source: str, line: int, reason: str, raw: str) -> BadRecord:
        record = BadRecord(source, line, reason, raw)
        self.records.append(record)
        return record

    def __len__(self) -> int:
        return len(self.records)

    def write_jsonl(self, path: str) -> None:
        """Write one JSON object per bad record (fields of BadRecord), locally or to a URI."""
        write_jsonl(str(path), (asdict(record) for record in self.records))

    def summary(self) -> str:
        """One line for logs: how many bad records, from how many files, and the first one."""
        if not self.records:
            return "no bad records"
        sources = len({record.source for record in self.records})
        return (f"{len(self.records)} bad record(s) quarantined from {sources} file(s); "
                f"first: {self.records[0]}")
