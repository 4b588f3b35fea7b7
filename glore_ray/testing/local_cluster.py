"""Ray clusters of local processes for the tests and benchmarks: free ports, the `ray` CLI of this
interpreter, a head whose real autoscaler starts and stops nodes on this machine, and stopping one
head's processes without touching any other Ray instance here."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

RAY = str(Path(sys.executable).parent / "ray")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ray_cli(*args: str, timeout: float = 120, env: dict[str, str] | None = None) -> str:
    done = subprocess.run([RAY, *args], capture_output=True, text=True, timeout=timeout, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"ray {' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return done.stdout


@contextmanager
def autoscaling_head(temp_dir: Path, node_types: dict, head_cpus: int = 2, idle_timeout_s: float = 6) -> Iterator[str]:
    """A head whose autoscaler (v2, as `ray up` starts it) launches and terminates nodes of
    `node_types` on this machine (Ray's fake multi-node provider: each node a raylet of its own),
    reading its config from `temp_dir/autoscaler.yaml`. Yields the GCS address; stopped at the end
    (its processes and the nodes it launched only)."""
    from ray._private.services import get_node_ip_address
    from ray.autoscaler._private.fake_multi_node.node_provider import FAKE_HEAD_NODE_ID, FakeMultiNodeProvider

    port = free_port()
    gcs = f"{get_node_ip_address()}:{port}"  # the address the fake provider's nodes and the monitor use
    head = {"resources": {"CPU": head_cpus}, "node_config": {}, "max_workers": 0}
    config = {"cluster_name": "glore-local", "max_workers": sum(t["max_workers"] for t in node_types.values()),
              "idle_timeout_minutes": idle_timeout_s / 60, "upscaling_speed": 1.0,
              # The fake provider as an external module: its defaults file (example.yaml) is not in Ray's wheel.
              "provider": {"type": "external", "module": f"{FakeMultiNodeProvider.__module__}.FakeMultiNodeProvider",
                           "gcs_address": gcs, "launch_multiple": True, "head_node_id": FAKE_HEAD_NODE_ID},
              "auth": {"ssh_user": "ubuntu"}, "head_node_type": "ray.head.default", "file_mounts": {},
              "cluster_synced_files": [], "file_mounts_sync_continuously": False, "rsync_exclude": [], "rsync_filter": [],
              **{f"{kind}_commands": [] for kind in ("initialization", "setup", "head_setup", "worker_setup",
                                                     "head_start_ray", "worker_start_ray")},
              "available_node_types": {"ray.head.default": head, **node_types}}
    (temp_dir / "autoscaler.yaml").write_text(json.dumps(config))  # JSON is YAML
    env = os.environ | {"RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1", "RAY_enable_autoscaler_v2": "1",
                        "RAY_CLOUD_INSTANCE_ID": FAKE_HEAD_NODE_ID, "RAY_OVERRIDE_NODE_ID_FOR_TESTING": FAKE_HEAD_NODE_ID}
    ray_cli("start", "--head", f"--port={port}",
            f"--autoscaling-config={temp_dir / 'autoscaler.yaml'}", f"--num-cpus={head_cpus}",
            "--dashboard-host=127.0.0.1", f"--dashboard-port={free_port()}", f"--metrics-export-port={free_port()}",
            f"--ray-client-server-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}",
            f"--temp-dir={temp_dir}", "--disable-usage-stats", env=env)
    try:
        yield gcs
    finally:
        # Its GCS outlives a SIGTERM by 30 s or more once the nodes it knew are gone; the cluster is thrown away.
        stop_head(temp_dir, port, timeout_s=3)


def stop_head(temp_dir: Path, gcs_port: int, timeout_s: float = 30) -> None:
    """Stop this head's processes and their children, and nothing else: `ray stop` stops every Ray
    instance on the machine, a pipeline the user runs beside the tests included. Its processes name
    its temp dir or its GCS port on their command line; workers are their children."""
    import psutil

    marks = (str(temp_dir), f":{gcs_port}")
    mine = {os.getpid(), *(p.pid for p in psutil.Process().parents())}
    procs: dict[int, psutil.Process] = {}
    for p in psutil.process_iter(["cmdline"]):
        try:
            if p.pid not in mine and any(m in arg for arg in p.info["cmdline"] or [] for m in marks):
                procs |= {q.pid: q for q in (p, *p.children(recursive=True))}
        except psutil.Error:  # exited meanwhile
            continue
    for p in procs.values():
        try:
            p.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(list(procs.values()), timeout=timeout_s)
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            pass
