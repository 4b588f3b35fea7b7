"""`glore pipeline` end to end on a miniature config: every stage on a local Ray cluster, the report,
then a re-run that skips every finished stage, resumes an interrupted training stage from its
Ray Train checkpoint and re-runs the stage whose config changed.

The miniature run is the session's (conftest `miniature_run`): test_serve serves its models.
"""

from __future__ import annotations

import json
import shutil

import pytest

from glore_ray.cli import main
from tests.miniature import MINIATURE, as_sets

# The first test's set-up runs the miniature pipeline (~4-5 min here) unless an earlier module did.
pytestmark = [pytest.mark.cluster, pytest.mark.timeout(900)]

STAGES = ["data", "init_model", "policy", "rollouts", "orm_labels", "sorm_labels", "orm", "sorm", "prm_labels", "prm",
          "reranker", "pairs", "global_refiner", "local_refiner", "evaluate"]


@pytest.fixture
def pipeline_run(miniature_run, ray_module):
    return miniature_run


def _manifest(out, stage: str) -> dict:
    return json.loads((out / stage / "manifest.json").read_text())


def test_pipeline_runs_every_stage_and_writes_the_report(pipeline_run, capsys) -> None:
    out = pipeline_run
    states = json.loads((out / "pipeline.json").read_text())["stages"]
    # The job ran data and init_model before it was stopped (conftest.miniature_job); the rest after.
    assert list(states) == STAGES and all(s["state"] == "done" for n, s in states.items() if n not in STAGES[:2])
    for stage in STAGES:
        manifest = _manifest(out, stage)
        assert manifest["stage"] == stage and manifest["counts"]["wall_s"] >= 0
    assert _manifest(out, "rollouts")["counts"]["questions"] == 8
    # Trained under DDP (the default) on both heads: the policy (causal LM) and the ORM (step value).
    assert _manifest(out, "policy")["counts"]["steps"] == 40 and _manifest(out, "orm")["counts"]["steps"] == 4

    report = json.loads((out / "report.json").read_text())
    assert report["n_test"] == 8 and report["k"] == 3
    assert list(report["reward_models"]) == ["orm", "sorm", "prm", "reranker"]
    assert report["settings"]["ranked_by"] == "reranker"
    assert (report["settings"]["global_offset"], report["settings"]["local_offset"]) == (0.0, 0.0)
    assert all(0 <= r["accuracy"] <= 1 and 0 <= r["kept_draft"] <= 8  # the choice replayed under each model
               for r in report["rerank_by"].values())
    reranker = _manifest(out, "reranker")["counts"]
    assert reranker["rows"] > 0 and len(reranker["weights"]) == 3
    # The reranker is fitted on held-out questions' ORM rows; the three reward models train on the
    # same rows, every one kept (the SORM's and PRM's weighted, not cut).
    labels = {kind: _manifest(out, f"{kind}_labels")["counts"] for kind in ("orm", "sorm", "prm")}
    assert labels["orm"]["heldout_rows"] == reranker["rows"]
    assert labels["orm"]["rows"] == labels["sorm"]["rows"] == labels["prm"]["rows"] > 0
    for model in ("orm", "sorm", "prm", "reranker"):
        for metric in ("step_accuracy", "balanced_step_accuracy", "final_accuracy"):
            assert 0.0 <= report["reward_models"][model][metric] <= 1.0
        assert "first_error_f1" in report["reward_models"][model]
        assert "within_question_auroc" in report["reward_models"][model]
        for metric in ("candidate_auroc", "rescue_auroc", "draft_auroc", "draft_first_error_f1",
                       "within_question_auroc_by_error_kind"):
            assert metric in report["reward_models"][model]
    assert list(report["refinement"]) == ["greedy", "best_of_3", "best_of_3_with_greedy", "global", "local",
                                          "local_orm", "local_oracle_where", "global_local_rerank", "rerank_oracle"]
    for row in report["refinement"].values():
        assert 0.0 <= row["ci95_low"] <= row["accuracy"] <= row["ci95_high"] <= 1.0
        diff = row["paired_diff_vs_greedy"]
        assert diff["low"] <= diff["mean"] <= diff["high"]
    # The rerank oracle is right whenever the draft or a refinement is.
    assert report["refinement"]["rerank_oracle"]["accuracy"] >= max(
        report["refinement"][m]["accuracy"] for m in ("greedy", "global", "local"))
    rerank = report["refinement"]["global_local_rerank"]
    assert 0 <= rerank["kept_wrong_draft"] <= rerank["kept_draft"] <= 8 and "rerank_capture" in rerank
    # The PRM trains on the exact checker's labels: they agree with exact truth everywhere.
    assert labels["prm"]["step_accuracy"] == 1.0
    quality = report["training_labels"]
    assert set(quality) == {"orm", "sorm", "sorm_minus_orm", "gate_passed"}
    assert quality["orm"]["checked"] == quality["sorm"]["checked"] > 0  # the same rows
    # A refiner with no pairs to learn from is kept untrained, and the report says so.
    pairs = _manifest(out, "pairs")["counts"]
    for refiner, kind in (("global_refiner", "global_pairs"), ("local_refiner", "local_pairs")):
        untrained = bool(_manifest(out, refiner)["counts"].get("untrained"))
        assert untrained == (pairs[kind] == 0)
        assert any(w.startswith(refiner) for w in report.get("warnings", [])) == untrained

    decisions = [json.loads(line) for line in (out / "evaluate" / "decisions.jsonl").read_text().splitlines()]
    assert len(decisions) == 8 and all(d["decision"]["refined"] for d in decisions)  # always_refine
    assert all(len(d["solutions"]) == 1 + 3 for d in decisions)
    # ensemble.refine_samples 2: every global rewrite has a sampled second, graded and scored beside it.
    assert report["settings"]["refine_samples"] == 2
    for d in decisions:
        assert set(d["decision"]["samples"]) == {"global_2"} | ({"local_2"} if d["decision"]["local"] else set())
        scored = {name for name, c in d["candidates"].items() if "orm" in c}
        assert scored <= set(d["decision"]["orm_scores"]) and d["decision"]["chosen"] in d["decision"]["orm_scores"]
    assert any("global_2" in d["candidates"] for d in decisions)
    md = (out / "report.md").read_text()
    assert "| SORM |" in md and "| ORM+likelihood |" in md and "| global + local + ORM+likelihood rerank |" in md
    for plot in ("calibration.png", "refinement.png"):
        assert (out / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_scaling_the_run_out_re_runs_nothing(pipeline_run, capsys) -> None:
    """More replicas and workers, other logging and checkpoint storage: where and how fast the stages
    run, not what they compute, so every finished stage is skipped."""
    out = pipeline_run
    before = {stage: (out / stage / "manifest.json").stat().st_mtime_ns for stage in STAGES}
    scaled = ["rollouts.pool.replicas=2", "labels.pool.replicas=2", "policy.num_workers=2", "sorm.num_workers=2",
              "policy.log_every=1", "orm.storage_path=" + str(out / "elsewhere"), "eval.pool.replicas=2"]
    capsys.readouterr()
    assert main(["pipeline", "--out", str(out), *as_sets(MINIATURE + scaled)]) == 0
    printed = capsys.readouterr().out
    for i, stage in enumerate(STAGES, 1):
        assert f"== [{i}/{len(STAGES)}] {stage}: up to date, skipped" in printed
    assert {stage: (out / stage / "manifest.json").stat().st_mtime_ns for stage in STAGES} == before


def test_rerun_skips_finished_stages_resumes_an_interrupted_one_and_reruns_a_changed_one(
        pipeline_run, capsys) -> None:
    out = pipeline_run
    before = {stage: (out / stage / "manifest.json").stat().st_mtime_ns for stage in STAGES}
    # The ORM's training was interrupted after its checkpoints (no manifest, no exported model), and
    # the evaluation's config changed.
    (out / "orm" / "manifest.json").unlink()
    shutil.rmtree(out / "orm" / "model")
    capsys.readouterr()
    assert main(["pipeline", "--out", str(out), *as_sets(MINIATURE + ["eval.n_problems=5"])]) == 0
    printed = capsys.readouterr().out

    assert "== [7/15] orm: resuming" in printed
    assert _manifest(out, "orm")["counts"]["resumed_from"] == 4  # the final checkpoint: no step redone
    assert "== [11/15] reranker: running" in printed  # its input, the ORM's model, was rewritten
    assert "== [15/15] evaluate: running" in printed
    assert "evaluate: re-running: eval.n_problems" in printed  # the runner says what changed
    assert json.loads((out / "report.json").read_text())["n_test"] == 5
    for stage in STAGES:
        if stage not in ("orm", "reranker", "evaluate"):
            assert f"{stage}: up to date, skipped" in printed
            assert (out / stage / "manifest.json").stat().st_mtime_ns == before[stage]


def test_expert_iteration_rounds_chain_their_policies() -> None:
    """Each round samples with the previous round's policy and trains from it; the later stages
    and the ensemble use the last round's (the miniature run has no rounds)."""
    from glore_ray.config import load_config
    from glore_ray.layout import RunLayout
    from glore_ray.pipeline.registry import build_stages

    cfg = load_config(None, ["expert_iteration.rounds=2"])
    stages = {s.name: s for s in build_stages(cfg, "/run")}
    assert list(stages)[3:9] == ["expert_iteration_1_samples", "expert_iteration_1_rows", "expert_iteration_1",
                                 "expert_iteration_2_samples", "expert_iteration_2_rows", "expert_iteration_2"]
    previous = RunLayout("/run").model("policy")
    for r in (1, 2):
        assert stages[f"expert_iteration_{r}_samples"].inputs["policy"] == previous
        assert stages[f"expert_iteration_{r}"].inputs == {"rows": f"/run/expert_iteration_{r}_rows/rows",
                                                         "init": previous}
        previous = RunLayout("/run").model(f"expert_iteration_{r}")
    assert stages["rollouts"].inputs["policy"] == stages["sorm_labels"].inputs["policy"] == previous
    assert RunLayout("/run").model_dirs(cfg)["policy"] == previous


def test_the_likelihood_reranker_is_a_stage_that_ranks_in_the_orms_place() -> None:
    from glore_ray.config import load_config
    from glore_ray.layout import RunLayout
    from glore_ray.pipeline.registry import build_stages

    off = load_config(None, ["reranker.likelihood=false"])
    assert "reranker" not in [s.name for s in build_stages(off, "/run")]
    assert "reranker" not in RunLayout("/run").model_dirs(off)
    cfg = load_config(None, ["reranker.fit_rows=100"])
    stages = {s.name: s for s in build_stages(cfg, "/run")}
    names = list(stages)
    assert names.index("orm") < names.index("reranker") < names.index("evaluate")
    policy = RunLayout("/run").model_dirs(cfg)["policy"]
    assert stages["reranker"].inputs == {"rows": "/run/orm_labels/heldout", "orm": RunLayout("/run").model("orm"),
                                         "policy": policy}
    assert stages["reranker"].config == {"reranker": {"likelihood": True, "fit_rows": 100, "heldout_share": 0.1,
                                                      "objective": "within_question"}}
    assert RunLayout("/run").model_dirs(cfg)["reranker"] == RunLayout("/run").model("reranker")
    assert stages["evaluate"].inputs["reranker"] == RunLayout("/run").model("reranker")


def test_evaluation_models_share_one_server_on_a_fraction_of_a_cpu_and_not_on_gpus() -> None:
    """A laptop's pool (a fraction of a CPU each, no GPU) puts every model in one actor that imports
    vLLM and torch once; whole CPUs or GPUs give each model its own server (the miniature run
    above evaluates through the shared one)."""
    from glore_ray.config import EnginePoolConfig
    from glore_ray.pipeline.evaluation import server_groups

    models = {"policy": "/p", "orm": "/o", "sorm": "/s"}
    assert server_groups(EnginePoolConfig(cpus_per_replica=0.25), models) == [models]
    one_each = [{"policy": "/p"}, {"orm": "/o"}, {"sorm": "/s"}]
    assert server_groups(EnginePoolConfig(cpus_per_replica=1.0), models) == one_each
    assert server_groups(EnginePoolConfig(cpus_per_replica=0.5, gpus_per_replica=1.0), models) == one_each


def test_from_names_an_unknown_stage(pipeline_run, capsys) -> None:
    assert main(["pipeline", "--out", str(pipeline_run), "--from", "sorm-labels", *as_sets(MINIATURE)]) == 2
    assert "--from 'sorm-labels': not a stage of this config; stages: data, init_model" in capsys.readouterr().err


def test_scaling_or_moving_a_run_changes_no_stage_hash_and_a_result_setting_does() -> None:
    """Resources, replicas, logging, checkpoints and storage are where and how fast a stage runs,
    not what it computes: re-running with other values skips every finished stage."""
    from glore_ray.config import load_config, result_config
    from glore_ray.pipeline.manifest import fingerprint
    from glore_ray.pipeline.registry import build_stages

    def hashes(overrides: list[str]) -> dict[str, str]:
        stages = build_stages(load_config(None, ["expert_iteration.rounds=1", *overrides]), "/run")
        return {s.name: fingerprint(result_config(s.config)) for s in stages}

    base = hashes([])
    scaled = hashes(["rollouts.pool.replicas=4", "labels.pool.cpus_per_replica=2", "eval.pool.batch_size=8",
                     "policy.log_every=7", "policy.num_workers=4", "orm.num_workers=2", "policy.cpus_per_worker=4", "policy.torch_threads=8",
                     "sorm.checkpoint_every=5", "orm.storage_path=s3://bucket/ckpt", "engine.gpu_memory_utilization=0.5"])
    assert scaled == base
    changed = hashes(["rollouts.k=5"])
    assert [name for name in base if changed[name] != base[name]] == ["rollouts"]


def test_a_manifest_that_hashed_every_field_still_matches(tmp_path) -> None:
    """Run directories from before execution fields left the hash are not re-run for it."""
    from glore_ray.pipeline.manifest import MANIFEST, fingerprint
    from glore_ray.pipeline.runner import Stage, stage_state

    config = {"policy": {"steps": 10, "lr": 0.001, "log_every": 50, "cpus_per_worker": 1.0}}
    old = {"stage": "policy", "config_hash": fingerprint(config), "config": config, "inputs": {}, "counts": {}}
    (tmp_path / MANIFEST).write_text(json.dumps(old))
    rescaled = {"policy": {"steps": 10, "lr": 0.001, "log_every": 5, "cpus_per_worker": 4.0}}
    assert stage_state(Stage("policy", {}, rescaled, lambda d, k: {}), tmp_path)[0] == "done"
    retrained = {"policy": {"steps": 11, "lr": 0.001, "log_every": 50, "cpus_per_worker": 1.0}}
    assert stage_state(Stage("policy", {}, retrained, lambda d, k: {}), tmp_path)[0] == "run"
