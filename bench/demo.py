"""`make demo`'s pipeline on this machine: a fresh run's wall time and its stages', a re-run that
skips every stage, and a run interrupted (Ctrl-C) inside a training stage and then resumed.

    .venv/bin/python bench/demo.py [--config cluster/configs/tiny-cpu.yaml]

Each run is `glore pipeline` in its own process with its own local Ray cluster, as a user runs it.
Prints a table and writes bench/results/demo.json.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.results_table import publish  # noqa: E402

INTERRUPTED_STAGE = "orm"


def pipeline(config: str, out: Path, *extra: str) -> subprocess.Popen:
    env = os.environ | {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    return subprocess.Popen([str(ROOT / ".venv" / "bin" / "glore"), "pipeline", "--config", config, "--out", str(out),
                             *extra], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)


def timed(config: str, out: Path, *extra: str) -> float:
    t0 = time.perf_counter()
    if pipeline(config, out, *extra).wait() != 0:
        raise SystemExit(f"glore pipeline {' '.join(extra)} failed; re-run it by hand to see why")
    return time.perf_counter() - t0


def states(out: Path) -> dict:
    return json.loads((out / "pipeline.json").read_text())["stages"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default=str(ROOT / "cluster" / "configs" / "tiny-cpu.yaml"))
    args = parser.parse_args()
    out = Path(tempfile.mkdtemp(prefix="glore-demo-")) / "run"
    results: dict = {"demo_wall_s": round(timed(args.config, out), 1)}
    results |= {f"stage_{name}_s": row["wall_s"] for name, row in states(out).items()}
    report = json.loads((out / "report.json").read_text())
    results |= {"greedy_accuracy": report["refinement"]["greedy"]["accuracy"],
                "global_local_rerank_accuracy": report["refinement"]["global_local_rerank"]["accuracy"]}

    results["rerun_wall_s"] = round(timed(args.config, out), 1)
    results["rerun_stages_skipped"] = sum(r["state"].startswith("up to date") for r in states(out).values())

    # Interrupt the re-run of a training stage once Ray Train has its first checkpoint, then resume.
    run = pipeline(args.config, out, "--from", INTERRUPTED_STAGE)
    checkpoints = out / INTERRUPTED_STAGE / "model.ray_train"
    while run.poll() is None and not list(checkpoints.glob("*/checkpoint_*/meta.json")):
        time.sleep(0.5)
    run.send_signal(signal.SIGINT)
    run.wait()
    results["interrupted_exit_code"] = run.returncode
    results["resume_wall_s"] = round(timed(args.config, out), 1)
    manifest = json.loads((out / INTERRUPTED_STAGE / "manifest.json").read_text())
    results["resumed_from_step"] = manifest["counts"]["resumed_from"]
    results["resume_states"] = ",".join(f"{n}={r['state']}" for n, r in states(out).items()
                                        if not r["state"].startswith("up to date"))
    publish("demo", results)


if __name__ == "__main__":
    main()
