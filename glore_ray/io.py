"""Files on a local disk or an object store (s3://, gs://, ... as pyarrow.fs understands them, the
filesystems Ray Data reads), by one path string: every stage reads and writes through these."""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path, PurePath, PurePosixPath
from typing import Any, TextIO
from urllib.parse import urlparse


def is_uri(path: str) -> bool:
    return "://" in path


def absolute(path: str) -> str:
    """A local path made absolute (Ray workers run elsewhere); a URI as it is."""
    return path if is_uri(path) else os.path.abspath(path)


def file_path(path: str) -> PurePath:
    """The path part of a local path or URI, for its stem and suffix."""
    return PurePosixPath(urlparse(path).path) if is_uri(path) else Path(path)


def filesystem_for(path: str):
    """The pyarrow filesystem of a local path or URI, and the path within it (absolute if local)."""
    from pyarrow import fs  # lazy: pyarrow is heavy

    if is_uri(path):
        return fs.FileSystem.from_uri(path)
    return fs.LocalFileSystem(), str(Path(path).resolve())


def exists(path: str) -> bool:
    from pyarrow import fs

    filesystem, target = filesystem_for(path)
    return filesystem.get_file_info(target).type != fs.FileType.NotFound


def output_target(path: str):
    """(filesystem, path within it) of a file about to be written, its parent directory made."""
    filesystem, target = filesystem_for(path)
    filesystem.create_dir(target.rsplit("/", 1)[0], recursive=True)
    return filesystem, target


def parquet_rows(path: str, columns: list[str]) -> Iterator[dict]:
    """The rows of a Parquet dataset (a directory of files, local or URI), `columns` only, streamed
    a batch at a time in this process: a stage's counts read back without another Ray Data job."""
    import pyarrow.dataset as ds

    filesystem, target = filesystem_for(path)
    for batch in ds.dataset(target, filesystem=filesystem, format="parquet").to_batches(columns=columns,
                                                                                       batch_size=4096):
        yield from batch.to_pylist()


def count_rows(path: str) -> int:
    """Rows of a Parquet dataset (from its files' footers) or lines of a JSONL file, read in this
    process: a count needs no Ray Data job."""
    import pyarrow.dataset as ds

    if file_path(path).suffix in (".jsonl", ".json"):
        with open_text(path) as lines:
            return sum(1 for line in lines if line.strip())
    filesystem, target = filesystem_for(path)
    return ds.dataset(target, filesystem=filesystem, format="parquet").count_rows()


@contextmanager
def open_text(path: str) -> Iterator[TextIO]:
    """Open a local path or a URI as UTF-8 text; iterate the result to stream lines."""
    if not is_uri(path):
        with open(path, encoding="utf-8") as file:
            yield file
        return
    filesystem, fs_path = filesystem_for(path)
    with io.TextIOWrapper(filesystem.open_input_stream(fs_path), encoding="utf-8") as file:
        yield file


def write_text(path: str, text: str) -> None:
    filesystem, target = output_target(path)
    with filesystem.open_output_stream(target) as sink:
        sink.write(text.encode())


def write_jsonl(path: str, rows: Iterable[Mapping[str, Any]]) -> int:
    """Write rows as JSONL to a local path or a URI; returns the number of rows."""
    filesystem, target = output_target(path)
    count = 0
    with io.TextIOWrapper(filesystem.open_output_stream(target), encoding="utf-8") as sink:
        for row in rows:
            sink.write(json.dumps(row, ensure_ascii=False) + "\n")
            count += 1
    return count
