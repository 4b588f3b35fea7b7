"""`make demo`'s pipeline on this machine: a fresh run's wall time and where it goes (each stage's),
the policy's greedy accuracy and the test size, a re-run that skips every stage, and a run
interrupted (Ctrl-C) inside a training stage and then resumed.

    .venv/bin/python bench/demo.py [--config cluster/configs/tiny-cpu.yaml] [--skip-resume]
    .venv/bin/python bench/demo.py --resume-only <finished run dir>   # only the interrupt-and-resume part

Each run is `glore pipeline` in its own process with its own local Ray cluster, as a user runs it
(its terminal output goes to <run>/../pipeline.log). Prints a table and writes
bench/results/demo.json, and the fresh run's report as bench/results/demo_report.md (with its plots);
`--name` names other files, for a candidate config.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
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
    log = (out.parent / "pipeline.log").open("a")
    return subprocess.Popen([str(ROOT / ".venv" / "bin" / "glore"), "pipeline", "--config", config, "--out", str(out),
                             *extra], env=env, stdout=log, stderr=subprocess.STDOUT)


def timed(config: str, out: Path, *extra: str) -> float:
    t0 = time.perf_counter()
    if pipeline(config, out, *extra).wait() != 0:
        raise SystemExit(f"glore pipeline {' '.join(extra)} failed; re-run it by hand to see why")
    return time.perf_counter() - t0


def states(out: Path) -> dict:
    return json.loads((out / "pipeline.json").read_text())["stages"]


def fresh_and_rerun(config: str, out: Path, name: str) -> dict:
    results: dict = {"pipeline_wall_s": round(timed(config, out), 1)}
    results |= {f"stage_{name}_s": row["wall_s"] for name, row in states(out).items()}
    report = json.loads((out / "report.json").read_text())
    refinement = report["refinement"]
    results |= {"n_test": report["n_test"], "policy_greedy_accuracy": report["policy"]["greedy_accuracy"],
                "policy_pass_at_k": report["policy"]["pass_at_k"],
                **{f"{row}_accuracy": refinement[row]["accuracy"] for row in ("greedy", "global", "local",
                                                                               "global_local_rerank", "rerank_oracle")},
                "global_local_rerank_vs_greedy": refinement["global_local_rerank"]["paired_diff_vs_greedy"]["mean"]}
    publish_report(out, name)
    results["rerun_wall_s"] = round(timed(config, out), 1)
    results["rerun_stages_skipped"] = sum(r["state"].startswith("up to date") for r in states(out).values())
    return results


def publish_report(out: Path, name: str) -> None:
    """The run's report.md and plots as bench/results/<name>_report.md and <name>_<plot>.png."""
    results = ROOT / "bench" / "results"
    md = (out / "report.md").read_text()
    for plot in out.glob("*.png"):
        shutil.copy(plot, results / f"{name}_{plot.name}")
        md = md.replace(f"({plot.name})", f"({name}_{plot.name})")
    (results / f"{name}_report.md").write_text(md)


def interrupt_and_resume(config: str, out: Path) -> dict:
    """Re-run a training stage (`--from`), Ctrl-C it once Ray Train has written its first checkpoint,
    then run the pipeline again."""
    run = pipeline(config, out, "--from", INTERRUPTED_STAGE)
    checkpoints = out / INTERRUPTED_STAGE / "model.ray_train"
    # The finished run's checkpoints are there until the forced stage clears its directory.
    while run.poll() is None and states(out)[INTERRUPTED_STAGE]["state"] != "running":
        time.sleep(0.5)
    # A checkpoint counts once the controller has registered it in its snapshot; one only on disk
    # is not restored.
    while run.poll() is None and not list(checkpoints.glob("*/checkpoint_manager_snapshot.json")):
        time.sleep(0.5)
    run.send_signal(signal.SIGINT)
    run.wait()
    results = {"interrupted_exit_code": run.returncode, "resume_wall_s": round(timed(config, out), 1)}
    manifest = json.loads((out / INTERRUPTED_STAGE / "manifest.json").read_text())
    results["resumed_from_step"] = manifest["counts"]["resumed_from"]
    results["resume_states"] = ",".join(f"{n}={r['state']}" for n, r in states(out).items()
                                        if not r["state"].startswith("up to date"))
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default=str(ROOT / "cluster" / "configs" / "tiny-cpu.yaml"))
    parser.add_argument("--resume-only", type=Path, metavar="RUN_DIR",
                        help="a finished run of --config: measure only the interrupt and resume, keeping the "
                             "other figures of bench/results/demo.json")
    parser.add_argument("--skip-resume", action="store_true", help="measure the fresh run and the re-run only")
    parser.add_argument("--name", default="demo", help="results: bench/results/<name>.json and <name>_report.md")
    args = parser.parse_args()
    if args.resume_only:
        results = json.loads((ROOT / "bench" / "results" / "demo.json").read_text())
        out = args.resume_only
    else:
        out = Path(tempfile.mkdtemp(prefix="glore-demo-")) / "run"
        results = fresh_and_rerun(args.config, out, args.name)
    publish(args.name, results if args.skip_resume else results | interrupt_and_resume(args.config, out))


if __name__ == "__main__":
    main()
