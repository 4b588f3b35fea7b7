"""The Serve app under a bounded load on loopback, three modes side by side in one run on one local
Ray cluster: dynamic batching on and off, and the likelihood reranker's term read from the policy
deployment's engine against from a second copy of the policy in the ORM's replica (the app before
the policy was held once), with each mode's replica memory.

    .venv/bin/python bench/serve.py [--models runs/demo] [--config cluster/configs/tiny-cpu.yaml]
                                    [--clients 16] [--requests 96] [--time-cap 300]

`--models` is a `glore pipeline` run with that config and `reranker.likelihood` (`make demo` writes
runs/demo). Batching off is max_batch_size 1 at the ingress (requests) and at every model (calls);
the second copy is the `orm` deployment serving the reranker folder itself. The app is deployed once
per mode on the same cluster. Each mode: a warm-up round, then each replica's resident memory
(RSS, psutil), then `--clients` closed-loop clients send `--requests` requests in all (or stop at
`--time-cap` seconds), every one with always_refine (the full path: draft, both refinements, four
reward-model calls). Prints a table and writes bench/results/serve.json.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.results_table import publish  # noqa: E402
from glore_ray.config import GloreConfig, load_config  # noqa: E402
from glore_ray.config.ensemble import MODELS  # noqa: E402
from glore_ray.models.engines import vllm_available  # noqa: E402
from glore_ray.testing.local_cluster import free_port  # noqa: E402

BATCH_SIZE_ON = 16


def post(url: str, body: dict) -> int:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            response.read()
            return response.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:  # refused, reset or timed out
        return 0


def load(url: str, questions: list[str], clients: int, n_requests: int, cap_s: float) -> dict:
    """Closed-loop clients until n_requests are sent or cap_s passes."""
    counter, lock = itertools.count(), threading.Lock()
    latencies: list[float] = []
    errors: list[int] = []
    t0 = time.perf_counter()

    def client() -> None:
        while time.perf_counter() - t0 < cap_s and (i := next(counter)) < n_requests:
            start = time.perf_counter()
            status = post(url, {"question": questions[i % len(questions)], "settings": {"always_refine": True}})
            with lock:
                (latencies.append(time.perf_counter() - start) if status == 200 else errors.append(status))

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ms = sorted(1000 * x for x in latencies)
    p = lambda q: ms[min(len(ms) - 1, int(q * len(ms)))] if ms else float("nan")  # noqa: E731
    return {"ok": len(latencies), "errors": len(errors), "wall_s": round(wall, 1),
            "throughput_rps": round(len(latencies) / wall, 3), "p50_ms": round(p(0.50), 1),
            "p99_ms": round(p(0.99), 1), "mean_ms": round(statistics.fmean(ms), 1) if ms else float("nan")}


def replica_rss_mb() -> dict[str, float]:
    """Resident memory of each deployment's replicas (Ray titles them `ServeReplica:<app>:<deployment>`)."""
    import psutil

    from glore_ray.serve.app import APP_NAME

    rss: dict[str, float] = {}
    for process in psutil.process_iter(["cmdline", "memory_info"]):
        title = " ".join(process.info["cmdline"] or [])
        if f"ServeReplica:{APP_NAME}:" in title and process.info["memory_info"]:
            deployment = title.split(f"ServeReplica:{APP_NAME}:")[1].split()[0]
            rss[deployment] = rss.get(deployment, 0) + round(process.info["memory_info"].rss / 2**20, 1)
    return rss


def with_batch_size(cfg: GloreConfig, size: int) -> GloreConfig:
    models = {m: replace(getattr(cfg.serve, m), max_batch_size=size) for m in ("ingress", *MODELS)}
    return replace(cfg, serve=replace(cfg.serve, **models))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default=str(ROOT / "runs" / "demo"))
    parser.add_argument("--config", default=str(ROOT / "cluster" / "configs" / "tiny-cpu.yaml"))
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=96)
    parser.add_argument("--time-cap", type=float, default=300)
    args = parser.parse_args()
    import ray
    from ray import serve

    from glore_ray.layout import RunLayout
    from glore_ray.serve.app import APP_NAME, build_app

    cfg = load_config(args.config, args.overrides)
    models = RunLayout(args.models).model_dirs(cfg)
    questions = [json.loads(line)["question"] for line in
                 (Path(args.models) / "data" / "test.jsonl").read_text().splitlines()[:200]]
    port = free_port()
    url = f"http://127.0.0.1:{port}/v1/solve"
    backend = cfg.engine.backend if cfg.engine.backend != "auto" else ("vllm" if vllm_available() else "hf")
    results: dict = {"engine": backend, "clients": args.clients, "requests_per_mode": args.requests,
                     "max_batch_size_on": BATCH_SIZE_ON}
    if "reranker" not in models:
        raise SystemExit(f"{args.models}: no likelihood reranker in this config (reranker.likelihood): "
                         "nothing to compare the policy's engine against")
    # The ORM's replica serving the reranker folder: its own copy of the policy reads the likelihood.
    second_copy = {m: path for m, path in models.items() if m != "reranker"} | {"orm": models["reranker"]}
    modes = (("batched", BATCH_SIZE_ON, models), ("unbatched", 1, models), ("copy", BATCH_SIZE_ON, second_copy))
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        ray.init(num_cpus=2, include_dashboard=False, _temp_dir=tmp, configure_logging=False, log_to_driver=False)
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        for mode, size, served in modes:
            t0 = time.perf_counter()
            serve.run(build_app(with_batch_size(cfg, size), served), name=APP_NAME, route_prefix="/")
            results[f"{mode}_app_start_s"] = round(time.perf_counter() - t0, 1)
            load(url, questions[::-1], args.clients, args.clients, args.time_cap)  # warm-up
            rss = replica_rss_mb()
            results |= {f"{mode}_rss_mb_{deployment}": mb for deployment, mb in sorted(rss.items())}
            results[f"{mode}_replicas_rss_mb"] = round(sum(rss.values()), 1)
            stats = load(url, questions, args.clients, args.requests, args.time_cap)
            print(f"{mode}: {stats}; replica RSS MB {rss}", flush=True)
            results |= {f"{mode}_{k}": v for k, v in stats.items()}
            serve.delete(APP_NAME)
        serve.shutdown()
        ray.shutdown()

    results |= {
        "batching_throughput_ratio": round(results["batched_throughput_rps"] / results["unbatched_throughput_rps"], 2),
        "p99_over_p50": round(results["batched_p99_ms"] / results["batched_p50_ms"], 2),
        "unbatched_p99_over_p50": round(results["unbatched_p99_ms"] / results["unbatched_p50_ms"], 2),
        "engine_over_copy_throughput_ratio": round(results["batched_throughput_rps"] / results["copy_throughput_rps"],
                                                   2),
        "engine_over_copy_p99_ratio": round(results["batched_p99_ms"] / results["copy_p99_ms"], 2),
        "orm_rss_mb_saved": round(results["copy_rss_mb_orm"] - results["batched_rss_mb_orm"], 1),
        "replicas_rss_mb_saved": round(results["copy_replicas_rss_mb"] - results["batched_replicas_rss_mb"], 1),
        "errors": results["batched_errors"] + results["unbatched_errors"] + results["copy_errors"],
    }
    publish("serve", results)


if __name__ == "__main__":
    main()
