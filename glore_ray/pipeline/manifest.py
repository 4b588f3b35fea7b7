"""A stage's manifest: what it was run with (its config slice, the hash of the part that changes its
result, and input fingerprints) and what it produced (counts), written as `manifest.json` in its
output directory, local or s3/gs."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from glore_ray.io import filesystem_for, write_text

MANIFEST = "manifest.json"


def fingerprint(value: Any) -> str:
    """A short stable hash of JSON-able data (a config section)."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def input_fingerprint(path: str) -> str:
    """A hash of a file's or a directory tree's listing (relative paths, sizes, modification
    times): cheap on object stores, and it changes whenever an input is rewritten."""
    from pyarrow import fs

    filesystem, root = filesystem_for(path)
    info = filesystem.get_file_info(root)
    if info.type == fs.FileType.NotFound:
        raise FileNotFoundError(f"input not found: {path}")
    infos = ([info] if info.type == fs.FileType.File
             else filesystem.get_file_info(fs.FileSelector(root, recursive=True)))
    listing = sorted((i.path[len(root):], i.size, i.mtime_ns) for i in infos if i.type == fs.FileType.File)
    return fingerprint(listing)


def write_manifest(out_dir: str, stage: str, config: Any, inputs: dict[str, str], input_hashes: dict[str, str],
                   counts: dict[str, Any]) -> dict:
    """The manifest of a stage that ran with `config` on `inputs`, fingerprinted (`input_fingerprint`)
    as `input_hashes` when it started."""
    from glore_ray.config import result_config

    manifest = {"stage": stage, "config_hash": fingerprint(result_config(config)), "config": config,
                "inputs": {name: {"path": path, "hash": input_hashes[name]} for name, path in inputs.items()},
                "counts": counts}
    write_text(f"{out_dir.rstrip('/')}/{MANIFEST}", json.dumps(manifest, indent=2, default=str) + "\n")
    return manifest


def read_json(path: Path) -> dict | None:
    """A JSON file (a manifest, a stage's start marker), or None when it is missing or cut short."""
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
