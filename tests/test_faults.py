"""Faults on a multi-node cluster simulated on this machine (ray.cluster_utils.Cluster: every node a
real raylet with its own resources), with the real stages; bench/faults.py runs the same scenarios,
larger, against the stage without the fault."""

from __future__ import annotations

import pytest

from bench.faults import rollouts_node_loss

pytestmark = pytest.mark.timeout(600)


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
