"""The data stages on a local Ray cluster with the real vLLM engine in a Ray Data actor pool:
rollouts (graded, de-duplicated, quarantined input, a killed replica), ORM and SORM labels with
balancing, and refinement pairs."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import replace
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from glore_ray.config import GloreConfig, LabelConfig, PairsConfig, RolloutConfig, SamplingConfig
from glore_ray.core.generation import Completion, Generation
from glore_ray.core.grading import render_solution
from glore_ray.core.labels import is_heldout
from glore_ray.core.organism import generate
from glore_ray.core.prompts import BAD_MARK, local_refine_prompt
from glore_ray.core.rollouts import grade_rollouts
from glore_ray.pipeline.progress import counters_name
from glore_ray.pipeline.registry import labels_stage, pairs_stage, rollouts_stage
from glore_ray.pipeline.runner import run_stage
from glore_ray.pipeline.schemas import ROLLOUTS_SCHEMA
from glore_ray.testing.training_rows import corrupt

pytestmark = pytest.mark.cluster


CFG = replace(GloreConfig(), rollouts=RolloutConfig(k=4), sampling=SamplingConfig(max_tokens=40),
              labels=LabelConfig(k=2, balance=False))


def read_rows(path) -> list[dict]:
    return pq.read_table(path).to_pylist()


def write_questions(path, n: int, bad_lines: list[str] = ()) -> list[str]:
    problems = list(generate(CFG.data.organism, "train", n))
    lines = [json.dumps(p.to_row()) for p in problems]
    for i, bad in enumerate(bad_lines):
        lines.insert(2 + 3 * i, bad)
    path.write_text("\n".join(lines) + "\n")
    return [p.id for p in problems]


def test_rollouts_graded_deduplicated_quarantined_and_a_killed_replica_loses_nothing(
        ray_module, tiny_model_dir, tmp_path) -> None:
    import os
    import signal

    import psutil
    import ray

    ids = write_questions(tmp_path / "q.jsonl", 24, ['{"id": "x", "question": "Hi?"}', "not json"])
    cfg = replace(CFG, rollouts=replace(CFG.rollouts, pool=replace(CFG.rollouts.pool, batch_size=2)))
    out = tmp_path / "rollouts"
    stage = rollouts_stage("rollouts", cfg, str(tmp_path / "q.jsonl"), str(tiny_model_dir))
    run = threading.Thread(target=run_stage, args=(stage, out))
    run.start()
    deadline, killed = time.time() + 240, None
    while killed is None and time.time() < deadline and run.is_alive():
        try:
            done = ray.get(ray.get_actor(counters_name(str(out))).snapshot.remote())[0].get("questions", 0)
        except ValueError:  # the stage has not created its counters yet
            done = 0
        # Ray titles an actor pool replica's process after its class (`ray::MapWorker(...RolloutSampler)`).
        replicas = [p for p in psutil.process_iter(["cmdline"]) if "RolloutSampler" in " ".join(p.info["cmdline"] or [])]
        if replicas and 2 <= done < 20:
            os.kill(replicas[0].pid, signal.SIGKILL)  # Ray restarts the actor; Ray Data retries its batch
            killed = done
        time.sleep(0.2)
    run.join(timeout=300)
    assert killed is not None, "the stage finished before a replica could be killed"
    assert not run.is_alive()

    rows = read_rows(tmp_path / "rollouts" / "data")
    assert sorted(r["id"] for r in rows) == sorted(ids)  # every question exactly once
    for row in rows:
        assert row["n_samples"] == 4 and sum(r["count"] for r in row["rollouts"]) == 4
        assert sum(r["greedy"] for r in row["rollouts"]) == 1  # the greedy solution, beside the samples
        texts = [" ".join(r["text"].split()) for r in row["rollouts"]]
        assert len(set(texts)) == len(texts)
    manifest = json.loads((tmp_path / "rollouts" / "manifest.json").read_text())
    counts = manifest["counts"]
    assert manifest["stage"] == "rollouts" and len(manifest["config_hash"]) == 16
    assert counts["questions"] == 24 and counts["samples"] == 96 and counts["quarantined"] == 2
    assert counts["unique"] == sum(len(r["rollouts"]) for r in rows) and counts["generated_tokens"] > 0
    quarantined = [json.loads(line) for line in (tmp_path / "rollouts" / "quarantine.jsonl").read_text().splitlines()]
    assert [q["line"] for q in quarantined] == [3, 6] and "missing field" in quarantined[0]["reason"]


def _handmade_rollouts(path, n: int = 6) -> list:
    """Rollouts of organism problems, one gold and one corrupted at a known step each."""
    problems = list(generate(CFG.data.organism, "train", n))
    rows = []
    for j, p in enumerate(problems):
        bad_at = j % len(p.steps)
        wrong = corrupt(list(p.steps), bad_at)
        texts = [p.solution(), render_solution(wrong, "0")]
        rows.append(grade_rollouts(p, Generation("", 9, [Completion(t, 20, "stop") for t in texts])))
    (path / "data").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=ROLLOUTS_SCHEMA), path / "data" / "part-0.parquet")
    return problems


def test_orm_and_sorm_labels_and_the_pairs_they_make(ray_module, tiny_model_dir, tmp_path) -> None:
    problems = _handmade_rollouts(tmp_path / "rollouts")
    rollouts = str(tmp_path / "rollouts")

    orm = labels_stage(CFG, "orm", rollouts).call(str(tmp_path / "orm"))
    orm_rows = read_rows(tmp_path / "orm" / "data")
    assert orm["rows"] == len(orm_rows) == 12
    assert all(r["labels"] == [r["id"].endswith("/r0")] * len(r["completions"]) for r in orm_rows)
    # Held-out questions: no reward model trains on them; the ORM writes theirs for the reranker.
    half = replace(CFG, reranker=replace(CFG.reranker, heldout_share=0.5))
    held = {p.id for p in problems if is_heldout(p.id, 0.5)}
    assert 0 < len(held) < len(problems)
    split = labels_stage(half, "orm", rollouts).call(str(tmp_path / "orm_split"))
    assert {r["problem_id"] for r in read_rows(tmp_path / "orm_split" / "heldout")} == held
    assert {r["problem_id"] for r in read_rows(tmp_path / "orm_split" / "data")} == {p.id for p in problems} - held
    assert split["rows"] + split["heldout_rows"] == 12
    prm = labels_stage(replace(half, labels=replace(CFG.labels, balance=True)), "prm", rollouts).call(
        str(tmp_path / "prm"))
    assert prm["rows"] == split["rows"] and prm["step_accuracy"] == 1.0  # the same rows, exact labels

    # Efficient mode: each gold rollout is its own evidence, and the corrupted rollout shares
    # the gold prefix up to its wrong step, so the labels are the exact truth even though the
    # untrained policy's own continuations are noise.
    cfg = replace(CFG, labels=replace(CFG.labels, balance=True))
    sorm = labels_stage(cfg, "sorm", rollouts, str(tiny_model_dir)).call(str(tmp_path / "sorm"))
    sorm_rows = {r["id"]: r for r in read_rows(tmp_path / "sorm" / "data")}
    assert len(sorm_rows) == sorm["rows"] == orm["rows"]  # every row kept: the ORM's budget
    for j, p in enumerate(problems):
        bad_at = j % len(p.steps)
        # The answer line is scored too, labelled with the rollout's correctness.
        assert sorm_rows[f"{p.id}/r0"]["labels"] == [True] * (len(p.steps) + 1)
        assert sorm_rows[f"{p.id}/r1"]["labels"] == [i < bad_at for i in range(len(p.steps))] + [False]
        assert sorm_rows[f"{p.id}/r1"]["completions"][-1] == "#### 0"
    assert sorm["continuations"] > 0 and sorm["generated_tokens"] > 0
    assert sorm["step_accuracy"] == 1.0 and sorm["negative_recall"] == 1.0
    # Balanced by weights: at every step index with both labels, equal weight on each.
    mass: dict = {}
    for row in sorm_rows.values():
        for i, (label, weight) in enumerate(zip(row["labels"], row["weights"], strict=True)):
            mass[(i, label)] = mass.get((i, label), 0.0) + weight
    both = [i for i, label in mass if label and (i, False) in mass]
    assert both and all(mass[(i, True)] == pytest.approx(mass[(i, False)]) for i in both)
    assert orm["step_accuracy"] < 1.0  # the ORM marks the right steps of a wrong rollout negative

    every = replace(CFG, pairs=PairsConfig(identity_share=1.0, reference_targets=True))
    pairs = pairs_stage(every, rollouts, str(tmp_path / "sorm" / "data")).call(str(tmp_path / "pairs"))
    # Every right rollout is also paired with itself: one per problem, for each refiner; every
    # problem has a right rollout, so no reference solution is needed.
    assert pairs["global_identity_pairs"] == pairs["local_identity_pairs"] == len(problems)
    assert pairs["global_reference_pairs"] == 0
    assert pairs["global_pairs"] == 2 * len(problems)
    identities = [r for r in read_rows(tmp_path / "pairs" / "global") if r["id"].endswith("-identity")]
    assert all(r["draft"] == r["target"] for r in identities)
    local = {r["id"].split("/")[0]: r for r in read_rows(tmp_path / "pairs" / "local")
             if not r["id"].endswith("-identity")}
    assert local and pairs["local_pairs"] == len(local) + len(problems)
    for j, p in enumerate(problems):
        bad_at = j % len(p.steps)
        if p.id not in local:
            assert bad_at == 0  # no earlier prefix to continue from
            continue
        pair = local[p.id]
        assert pair["bad_step"] == bad_at and pair["draft_steps"][:bad_at] == list(p.steps[:bad_at])
        prompt = local_refine_prompt(p.question, pair["draft_steps"], pair["bad_step"])
        assert f"{BAD_MARK} {pair['draft_steps'][bad_at]}" in prompt
        assert pair["target"] == render_solution(p.steps[bad_at:], p.answer)


def test_the_cli_verb_runs_the_pipelines_stage_and_skips_it_when_up_to_date(ray_module, tmp_path, capsys) -> None:
    from glore_ray.cli import main

    _handmade_rollouts(tmp_path / "rollouts", n=3)
    args = ["label", "orm", "--data", str(tmp_path / "rollouts"), "--out", str(tmp_path / "orm")]
    assert main(args) == 0
    assert "orm_labels: rows 6, labels" in capsys.readouterr().out
    manifest = json.loads((tmp_path / "orm" / "manifest.json").read_text())
    assert manifest["stage"] == "orm_labels" and manifest["counts"]["rows"] == 6
    assert manifest["inputs"]["rollouts"]["path"] == str(tmp_path / "rollouts" / "data")
    # The same runner as `glore pipeline`: the stage is up to date, and a changed input re-runs it.
    assert main(args) == 0
    assert f"orm_labels: up to date in {tmp_path / 'orm'}, skipped" in capsys.readouterr().out
    _handmade_rollouts(tmp_path / "rollouts2", n=2)
    (tmp_path / "rollouts" / "data" / "part-0.parquet").write_bytes(
        (tmp_path / "rollouts2" / "data" / "part-0.parquet").read_bytes())
    assert main(args) == 0
    assert "orm_labels: re-running: input rollouts rewritten" in capsys.readouterr().out
    assert json.loads((tmp_path / "orm" / "manifest.json").read_text())["counts"]["rows"] == 4


def test_expert_iteration_rows_are_each_sampled_questions_gold_and_correct_rollouts_shuffled(
        ray_module, tmp_path) -> None:
    from glore_ray.layout import RunLayout
    from glore_ray.pipeline.registry import expert_iteration_stages

    problems = _handmade_rollouts(tmp_path / "samples", n=40)  # a gold and a wrong rollout per question
    cfg = replace(CFG, policy=replace(CFG.policy, seed=-1))  # round 1's seed: policy.seed + 1 = 0
    stage = expert_iteration_stages(cfg, RunLayout(str(tmp_path)), "policy", 1)[1]
    assert stage.inputs == {"samples": f"{tmp_path}/expert_iteration_1_samples/data"}
    stage.inputs["samples"] = str(tmp_path / "samples" / "data")
    counts = stage.call(str(tmp_path / "round"))
    assert counts == {"rows": 2 * len(problems), "gold_rows": len(problems), "correct_samples": len(problems)}
    rows = read_rows(tmp_path / "round" / "rows")
    gold = {p.id: p.solution() for p in problems}
    assert sorted(r["id"] for r in rows) == sorted([*gold, *(f"{p}/r0" for p in gold)])
    assert all(r["solution"] == gold[r["id"].split("/")[0]] for r in rows)  # the correct rollout is the gold text
    # Shuffled, not file order (a question's rows together, gold first): a round that reads only its
    # first steps x batch rows still sees a sample of every kind.
    file_order = [i for p in gold for i in (p, f"{p}/r0")]
    assert [r["id"] for r in rows] != file_order
    assert sum("/" in r["id"] for r in rows[:len(rows) // 2]) > len(problems) // 4
    stage.call(str(tmp_path / "again"))
    assert [r["id"] for r in read_rows(tmp_path / "again" / "rows")] == [r["id"] for r in rows]


def test_a_replica_builds_and_calls_its_engine_on_one_thread_with_the_pools_torch_threads(monkeypatch) -> None:
    """Ray Data calls a replica from a thread of its own pool; the engine must be built and called
    on one thread (vLLM's CPU build is slower elsewhere), after torch's threads are set there."""
    import torch

    from glore_ray.config import EnginePoolConfig
    from glore_ray.pipeline import ray_data

    seen: dict[str, tuple] = {}
    monkeypatch.setattr(torch, "set_num_threads", lambda n: seen.setdefault("threads", (threading.get_ident(), n)))
    monkeypatch.setattr(ray_data, "load_model", lambda *args: seen.setdefault("built", (threading.get_ident(),)))

    class Echo(ray_data.Replica):
        def process(self, batch):
            seen["called"] = (threading.get_ident(),)
            return batch

    reported: list[dict] = []
    counters = SimpleNamespace(add=SimpleNamespace(remote=reported.append))  # the counters actor's handle
    replica = Echo("model", None, EnginePoolConfig(cpu_threads=3), counters=counters)
    caller = threading.Thread(target=replica, args=(pa.table({"x": [1]}),))
    caller.start()
    caller.join()
    assert seen["built"] == seen["called"] and seen["threads"] == (*seen["built"], 3)
    assert seen["called"] != (threading.get_ident(),)  # neither the caller's thread nor the constructor's
    assert reported == [{"replica_starts": 1}]


def test_a_cpu_replica_takes_the_nodes_cpus_over_the_pools_replicas_unless_told() -> None:
    from glore_ray.config import EnginePoolConfig

    assert EnginePoolConfig(replicas=2).threads_per_replica(8) == 4
    assert EnginePoolConfig(replicas=4).threads_per_replica(2) == 1
    assert EnginePoolConfig(replicas=2, cpu_threads=3).threads_per_replica(8) == 3
    assert EnginePoolConfig(gpus_per_replica=1).threads_per_replica(8) is None  # Ray's setting stands


def test_the_reward_models_questions_come_after_expert_iterations(tmp_path) -> None:
    from glore_ray.config import ConfigError, load_config
    from glore_ray.pipeline.registry import build_stages
    from glore_ray.pipeline.rollouts import prepare_questions

    cfg = load_config(None, ["expert_iteration.rounds=1", "expert_iteration.max_questions=5",
                             "rollouts.max_questions=4"])
    stages = {s.name: s for s in build_stages(cfg, str(tmp_path / "run"))}
    assert stages["expert_iteration_1_samples"].config["first_question"] == 0
    assert stages["rollouts"].config["first_question"] == 5
    ids = write_questions(tmp_path / "train.jsonl", 12)
    assert prepare_questions(str(tmp_path / "train.jsonl"), str(tmp_path / "out"), 5, 4, False)["questions"] == 4
    assert [r["id"] for r in read_rows(tmp_path / "out" / "questions")] == ids[5:9]
    with pytest.raises(ConfigError, match="rollouts.disjoint_from_expert_iteration"):
        load_config(None, ["expert_iteration.rounds=1", "expert_iteration.max_questions=0"])
    paper = load_config(None, ["expert_iteration.rounds=1", "expert_iteration.max_questions=0",
                               "rollouts.disjoint_from_expert_iteration=false"])
    assert {s.name: s for s in build_stages(paper, str(tmp_path / "p"))}["rollouts"].config["first_question"] == 0
