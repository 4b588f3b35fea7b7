"""Whether a cluster can ever hold a stage's request: decided from the nodes alive and the node
types of the autoscaler's config, without a cluster."""

from __future__ import annotations

import pytest

from glore_ray.capacity import NodeType, Unsatisfiable, check, file_node_types, node_types_of, request
from tests.conftest import REPO

AWS = REPO / "cluster" / "ray-up" / "aws.yaml"
HEAD = {"CPU": 2.0, "memory": 8 * 2**30}


def test_a_request_is_rays_resources_with_the_accelerator_type_as_ray_asks_it() -> None:
    assert request(0.5) == {"CPU": 0.5}
    assert request(1, 8, "A100-80G", {"engine_node": 1}) == {
        "CPU": 1, "GPU": 8, "accelerator_type:A100-80G": 0.001, "engine_node": 1}


def test_the_node_types_of_the_shipped_aws_cluster_file() -> None:
    types = {t.name: t for t in file_node_types(str(AWS))}
    assert set(types) == {"head", "cpu_spot", "gpu_a100_spot", "gpu_a100", "gpu_serve"}
    assert types["gpu_a100_spot"].resources == {"CPU": 96, "GPU": 8, "accelerator_type:A100-80G": 1}
    assert types["gpu_a100_spot"].max_workers == 2 and types["head"].max_workers == 1


@pytest.mark.parametrize("wanted, expected", [
    ({"CPU": 1}, "alive"),                                              # the head holds it
    ({"CPU": 8, "GPU": 1, "accelerator_type:L40S": 0.001}, "startable"),  # a gpu_serve node
    ({"CPU": 96, "GPU": 8}, "startable"),                                # an A100 node, any of two types
])
def test_a_request_a_live_node_or_a_node_type_holds_goes_ahead(wanted, expected) -> None:
    assert check("rollouts.pool", wanted, [HEAD], file_node_types(str(AWS))) == expected


def test_a_request_no_node_type_holds_fails_naming_the_request_the_nodes_and_the_types() -> None:
    with pytest.raises(Unsatisfiable) as error:
        check("labels.pool", request(1, 1, "H100"), [HEAD], file_node_types(str(AWS)))
    message = str(error.value)
    assert "labels.pool asks for {CPU: 1, GPU: 1, accelerator_type:H100: 0.001}" in message
    assert "the 1 alive ({CPU: 2, memory: 8.0 GiB})" in message
    assert "gpu_a100_spot {CPU: 96, GPU: 8, accelerator_type:A100-80G: 1} x2" in message
    assert all(name in message for name in ("head", "cpu_spot", "gpu_a100", "gpu_serve"))


def test_a_node_type_the_autoscaler_may_not_start_does_not_count() -> None:
    types = node_types_of({"head_node_type": "head", "available_node_types": {
        "head": {"resources": {"CPU": 0}}, "gpu": {"resources": {"CPU": 8, "GPU": 1}, "max_workers": 0}}})
    assert types == [NodeType("head", {"CPU": 0.0}, 1), NodeType("gpu", {"CPU": 8.0, "GPU": 1.0}, 0)]
    with pytest.raises(Unsatisfiable):
        check("policy", {"GPU": 1}, [HEAD], types)


def test_without_node_types_a_request_no_live_node_holds_is_left_to_ray(tmp_path) -> None:
    assert file_node_types(str(tmp_path / "absent.yaml")) is None
    assert check("policy", {"GPU": 1}, [HEAD], None) == "unknown"
