"""Faults on a multi-node cluster simulated on this machine (ray.cluster_utils.Cluster: every node a
real raylet with its own resources), and a cluster the real autoscaler grows from zero and shrinks
back, with the real stages; bench/faults.py runs the same scenarios, larger, against the stage
without the fault."""

from __future__ import annotations

import json
import logging

import pytest

from glore_ray.testing.autoscaling import ACCELERATOR, autoscaling_from_zero
from glore_ray.testing.faults import (
    TRAINING,
    rollouts_node_loss,
    serve_node_loss,
    training_node_loss,
)

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(900)]  # the Serve test may run the miniature job first


def test_a_node_lost_mid_rollouts_costs_a_replica_and_no_question(tiny_model_dir, tmp_path, caplog) -> None:
    """Two replicas on two engine nodes, a third node spare; one replica's node is removed once a
    quarter of the questions are done. The stage ends on what is left: every question written once,
    the manifest's counts those of the files, the replacement counted."""
    run = rollouts_node_loss(str(tiny_model_dir), tmp_path, questions=24, lose_node=True)
    assert run["error"] is None, repr(run["error"])
    assert run["quarter_to_end_s"] is not None  # the node was removed while the stage ran
    assert run["rows_lost"] == 0 and run["rows_duplicated"] == 0
    counts = run["counts"]
    assert counts["questions"] == 24 and counts["samples"] == 24 * 2
    assert counts["replica_starts"] == 3  # the two replicas, and the one that replaced the lost one
    assert "rollouts: 1 replica(s) lost and replaced (3 starts for a pool of 2)" in caplog.text


def test_a_node_lost_mid_training_resumes_from_its_checkpoint_and_ends_at_steps(tiny_model_dir, tmp_path) -> None:
    """Two DeepSpeed ZeRO-2 workers on two train nodes, a third spare; once the controller has
    registered a checkpoint, one worker's node is removed. Ray Train restarts the group from the last registered
    checkpoint (max_failures 1) and the run ends at exactly `steps`; the exported model loads."""
    from glore_ray.config import load_config
    from glore_ray.pipeline.data_stage import write_sft_rows, write_split

    cfg = load_config(None, ["data.organism.n_train=700"])
    write_split(cfg.data, "train", str(tmp_path / "train.jsonl"))
    write_sft_rows(str(tmp_path / "train.jsonl"), str(tmp_path / "sft.jsonl"))
    run = training_node_loss(str(tiny_model_dir), str(tmp_path / "sft.jsonl"), tmp_path, lose_node=True)
    assert run["error"] is None, repr(run["error"])
    assert run["checkpoint_to_end_s"] is not None  # the node was removed while it trained
    summary = run["summary"]
    assert summary["step"] == TRAINING.steps
    assert summary["resumed_from"] is not None and TRAINING.checkpoint_every <= summary["resumed_from"] < TRAINING.steps
    assert run["model_loads"]


def test_a_node_lost_under_serve_answers_503_naming_the_model_then_the_same_answer(miniature_run) -> None:
    """The miniature's Serve app with the policy's replica on a serve node (a spare beside it); the
    node is removed and one client keeps asking: a 503 naming the policy until Serve has replaced
    the replica elsewhere (never another error, never a hang), then the answer from before."""
    from glore_ray.testing.local_cluster import free_port
    from tests.miniature import MINIATURE

    question = json.loads((miniature_run / "data" / "test.jsonl").read_text().splitlines()[0])["question"]
    run = serve_node_loss(str(miniature_run), MINIATURE, free_port(), question)
    statuses = [status for status, _ in run["after"]]
    assert 503 in statuses and statuses[-1] == 200 and set(statuses) == {200, 503}, run["after"]
    assert all(model == "policy" for status, model in run["after"] if status == 503)
    assert run["last"] == run["before"]


def test_a_stage_asking_for_an_accelerator_starts_a_node_of_that_type_and_gives_it_back(
        tiny_model_dir, tmp_path_factory, caplog) -> None:
    """From no worker node: a rollout stage whose replica asks for the A100 marker gets a node of an
    A100 type from the real autoscaler (v2, over aws.yaml's node types scaled to this machine), runs
    there, and the node ends once idle; a request no node type holds then fails at once, naming the
    request and every node type."""
    from glore_ray.capacity import Unsatisfiable

    caplog.set_level(logging.INFO, logger="glore_ray")
    run = autoscaling_from_zero(str(tiny_model_dir), tmp_path_factory.mktemp("autoscale"), questions=8)
    assert run["error"] is None, repr(run["error"])
    assert run["accelerator_nodes_before"] == 0 and run["node_up_s"] is not None
    assert run["counts"]["questions"] == 8 and run["counts"]["samples"] == 16
    assert run["replica_nodes"] and all(ACCELERATOR in node for node in run["replica_nodes"])
    assert "rollouts.pool: no node alive holds" in caplog.text and "the autoscaler starts one" in caplog.text
    assert run["idle_end_s"] is not None  # the node was terminated once idle

    error = run["unsatisfiable"]
    assert isinstance(error, Unsatisfiable) and run["unsatisfiable_s"] < 30, repr(error)
    assert "rollouts.pool asks for {CPU: 0.5, accelerator_type:H100: 1}" in str(error)
    assert all(name in str(error) for name in run["node_types"])
