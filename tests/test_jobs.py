"""glore-ray the way Ray users run it: the miniature pipeline submitted as a Ray job (conftest
`miniature_job`: a real `ray start --head`, `ray job submit`, `ray job logs`) and the project's
metrics on the head's metrics endpoint while its stages ran; `jobs/` scripts and `--only`."""

from __future__ import annotations

import json
import re

import pytest

from glore_ray.metrics import METRICS, StageMetrics
from glore_ray.pipeline.runner import select_stages
from tests.conftest import REPO
from tests.ray_head import parse_metrics

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(900)]

TRAINING = {"train_steps", "train_loss", "train_tokens_per_second"}
GENERATION = {"questions", "samples", "generated_tokens"}
TRAINING_STAGE = re.compile(r"policy|orm|sorm|prm|global_refiner|local_refiner|expert_iteration_\d+")


def expected_metrics(stage: str) -> set[str]:
    """The metrics a stage of the miniature pipeline records while it runs."""
    if stage in ("rollouts",) or stage.endswith("_samples"):
        return GENERATION | {"generation_tokens_per_second"}
    if stage == "sorm_labels":
        return GENERATION | {"sorm_steps", "generation_tokens_per_second"}
    if stage == "evaluate":
        return GENERATION | {"chosen_candidates"}
    if TRAINING_STAGE.fullmatch(stage):
        return TRAINING
    return set()  # data, init_model, orm_labels, pairs, expert-iteration rows: no engine, no training loop


def test_the_pipeline_job_succeeds_and_its_logs_and_artifacts_read_back(miniature_job) -> None:
    job = miniature_job
    assert job.status == "SUCCEEDED", job.submit_output[-5000:]
    assert "Job 'glore-miniature' succeeded" in job.submit_output
    # `ray job logs` returns the driver's output: the stage lines, the stage table and the report.
    assert "evaluate: done" in job.logs and "| stage | state | wall s |" in job.logs
    assert "# GLoRe evaluation: tiny-cpu" in job.logs
    states = json.loads((job.out / "pipeline.json").read_text())["stages"]
    assert states and all(s["state"] in ("done", "up to date, skipped") for s in states.values())
    report = json.loads((job.out / "report.json").read_text())
    assert report["run_name"] == "tiny-cpu" and report["n_test"] == 8
    assert (job.out / "report.md").read_text().startswith("# GLoRe evaluation")


def test_the_job_prints_progress_with_an_estimate_and_ends_with_the_next_commands(miniature_job) -> None:
    """What a person sees: a line per stage with the time spent and left, the long stages' own
    progress, only glore's lines (the workers' logs stay in Ray's log directory), and at the end
    the report's tables, the plots and the commands that serve the trained ensemble."""
    logs = miniature_job.logs
    # The job was submitted again after a stop (conftest.miniature_job): its first stages are skipped.
    done = re.findall(r"== \[(\d+)/(\d+)\] (\w+): (?:done in \d+ s|up to date, skipped)  "
                      r"\(pipeline \d+:\d\d, about (\d+):(\d\d) left\)", logs)
    assert [name for *_, name, _, _ in done][-1] == "evaluate" and len(done) == int(done[0][1])
    assert int(done[-1][3]) * 60 + int(done[-1][4]) == 0  # nothing left once the last stage is done
    assert re.search(r"\n  (policy|orm|sorm): (starting the Ray Train workers|step \d+ of \d+)", logs)
    assert "tok/s/worker" not in logs and "RayTrainWorker" not in logs  # the workers' own lines
    assert "Ray workers' logs: " in logs
    tail = [line for line in logs.splitlines() if line.strip()][-4:]
    assert tail[0].startswith("plots: ") and tail[0].count(".png") == 2, "\n".join(tail)
    assert tail[2] == f"  glore serve --models {miniature_job.out}"
    assert tail[3].startswith("  curl -s http://127.0.0.1:8000/v1/solve") and '"question"' in tail[3]


def test_every_stage_that_ran_exported_its_metrics_and_the_data_stages_while_they_ran(miniature_job) -> None:
    """A process's values reach the endpoint seconds after it records them (~4 s measured here),
    so what a miniature stage records in its last seconds may first show while the next one runs.
    Every stage's metrics must reach the endpoint, and the generating stages' tokens and samples
    must be read while they run (recorded per batch, well before they end)."""
    out = miniature_job.out
    ran = [name for name, row in json.loads((out / "pipeline.json").read_text())["stages"].items()
           if row["state"] == "done"
           and not json.loads((out / name / "manifest.json").read_text())["counts"].get("untrained")]
    assert "evaluate" in ran
    during: dict[str, dict[str, float]] = {}  # stage -> metric -> largest value read while it ran
    anytime: dict[str, dict[str, float]] = {}
    for scrape in miniature_job.scrapes:
        for name, labels, value in scrape.series:
            if labels.get("run") != "tiny-cpu":
                continue
            metric = name.removeprefix("ray_glore_").removesuffix("_total")
            views = [anytime] + ([during] if labels.get("stage") in scrape.running else [])
            for view in views:
                per_stage = view.setdefault(labels.get("stage"), {})
                per_stage[metric] = max(per_stage.get(metric, 0.0), value)
    for stage in ran:
        missing = {m for m in expected_metrics(stage) if anytime.get(stage, {}).get(m, 0) <= 0}
        assert not missing, f"{stage}: no non-zero {sorted(missing)} on the endpoint; read: {anytime.get(stage)}"
        if expected_metrics(stage) & GENERATION:
            missing = {m for m in ("samples", "generated_tokens") if during.get(stage, {}).get(m, 0) <= 0}
            assert not missing, f"{stage}: no non-zero {sorted(missing)} while it ran; read: {during.get(stage)}"


def test_recording_outside_ray_does_nothing_and_every_metric_has_a_kind() -> None:
    StageMetrics("rollouts", "r").record("questions", 3)  # no cluster: a no-op, no error
    assert {spec.kind for spec in METRICS.values()} == {"counter", "gauge", "histogram"}


def test_parse_metrics_reads_the_projects_series_only() -> None:
    page = "\n".join([
        "# HELP ray_glore_questions_total Questions a stage has finished",
        'ray_glore_questions_total{Component="core_worker",run="r",stage="rollouts"} 8.0',
        'ray_glore_sorm_steps_total{label="positive",run="r",stage="sorm_labels"} 3.0',
        'ray_node_cpu_utilization{ip="127.0.0.1"} 12.5'])
    assert parse_metrics(page) == [
        ("ray_glore_questions_total", {"Component": "core_worker", "run": "r", "stage": "rollouts"}, 8.0),
        ("ray_glore_sorm_steps_total", {"label": "positive", "run": "r", "stage": "sorm_labels"}, 3.0)]


def test_only_selects_stages_and_expert_iteration_rounds() -> None:
    names = ["data", "policy", "expert_iteration_1_samples", "expert_iteration_1_rows", "expert_iteration_1",
             "rollouts", "evaluate"]
    assert select_stages(names, ["expert_iteration"]) == names[2:5]
    assert select_stages(names, ["evaluate", "data"]) == ["data", "evaluate"]
    with pytest.raises(ValueError, match="--only 'sorm-labels': not a stage of this config"):
        select_stages(names, ["sorm-labels"])


def test_a_stage_job_names_the_earlier_stage_that_is_not_done(tmp_path) -> None:
    """What `jobs/orm.py` runs on an empty run directory: it stops before any work, naming the
    first stage that has not run (no cluster needed to find out)."""
    from glore_ray.config import load_config
    from glore_ray.pipeline.runner import run_pipeline

    with pytest.raises(ValueError, match=r"data is not done in .* run it before orm$"):
        run_pipeline(load_config(None), str(tmp_path / "run"), only=["orm"])
    assert not (tmp_path / "run" / "orm").exists()


def test_every_stage_of_the_pipeline_has_a_job_script() -> None:
    from glore_ray.config import load_config
    from glore_ray.pipeline.registry import build_stages

    every_stage = load_config(None, ["expert_iteration.rounds=1", "labels.prm=true"])
    names = [s.name for s in build_stages(every_stage, "/tmp/run")]
    scripts = {p.stem for p in (REPO / "jobs").glob("*.py")}
    for name in names:
        job = "expert_iteration" if name.startswith("expert_iteration_") else name
        assert job in scripts, f"no jobs/{job}.py for stage {name}"
        assert f'"--only", "{job}"' in (REPO / "jobs" / f"{job}.py").read_text()
    assert {"pipeline", "serve"} <= scripts


def test_the_grafana_dashboard_charts_every_metric_and_only_real_ones() -> None:
    dashboard = json.loads((REPO / "cluster" / "grafana" / "glore.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    charted = {m for e in exprs for m in re.findall(r"ray_glore_(\w+?)(?:_total|_bucket)?\{", e)}
    assert charted == set(METRICS)
    assert all('run=~"$run"' in e for e in exprs)
    assert {v["name"] for v in dashboard["templating"]["list"]} == {"datasource", "run"}


def test_a_stopped_job_submitted_again_resumes_where_it_was(miniature_job) -> None:
    """The miniature job was stopped with `ray job stop` while the policy trained and submitted
    again (conftest.miniature_job): the finished stages are skipped, the policy resumes from its
    last registered checkpoint and ends at exactly `steps`."""
    stopped = miniature_job.stopped
    assert stopped, "GLORE_MINIATURE_RUN held a finished run: nothing was stopped this session"
    assert stopped.status == "STOPPED" and not stopped.policy_had_manifest
    assert "policy: resuming" in miniature_job.logs, miniature_job.logs[-3000:]
    for stage in ("data", "init_model"):
        assert f"{stage}: up to date, skipped" in miniature_job.logs
    counts = json.loads((miniature_job.out / "policy" / "manifest.json").read_text())["counts"]
    assert counts["steps"] == 40 and counts["resumed_from"] in (10, 20, 30), counts
