"""The benchmarks' output: a two-column table on stdout and bench/results/<name>.json (flat keys)."""

from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def publish(name: str, results: dict) -> None:
    width = max(map(len, results))
    print("\n".join(f"{key:<{width}}  {value}" for key, value in results.items()))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(results, indent=2) + "\n")
