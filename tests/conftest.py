"""Test environment: Ray and vLLM kept inside the test session's temp dirs, no network, and a
tiny model folder built once per session."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

# Before anything imports ray or vllm: explicit auth mode (Ray 2.60 turns token auth on once
# ~/.ray/auth_token exists), no usage stats, in-process vLLM engines (~2 s start instead of ~14 s).
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Ray Train's controller polls its workers every 2 s by default; each of the suite's ~20 runs waits
# on a few polls (start, finish, a dead worker), ~5 s a run.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")

REPO = Path(__file__).resolve().parents[1]


def _shared_data() -> Path:
    """The GSM8K/SVAMP directory: $GLORE_SHARED_DATA, else `shared/data` beside this checkout, else
    beside the checkout this one was cloned from (a local clone made elsewhere, as CI's check
    does). The tests that read it name it when it is missing."""
    if "GLORE_SHARED_DATA" in os.environ:
        return Path(os.environ["GLORE_SHARED_DATA"])
    beside = REPO.parent / "shared" / "data"
    origin = subprocess.run(["git", "-C", str(REPO), "config", "--get", "remote.origin.url"],
                            capture_output=True, text=True).stdout.strip()
    if not beside.is_dir() and origin and Path(origin).is_dir():
        cloned_from = Path(origin).resolve().parent / "shared" / "data"
        if cloned_from.is_dir():
            return cloned_from
    return beside


SHARED_DATA = _shared_data()


@pytest.fixture(scope="session", autouse=True)
def _session_caches(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Compiled-kernel caches live in the session's temp dir, shared by all its tests."""
    caches = tmp_path_factory.mktemp("caches")
    os.environ.setdefault("VLLM_CACHE_ROOT", str(caches / "vllm"))
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(caches / "inductor"))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained tiny Llama + tokenizer trained on organism text, as a Hugging Face folder."""
    from glore_ray.config import ModelConfig, OrganismConfig
    from glore_ray.core.organism import generate
    from glore_ray.core.prompts import solve_prompt
    from glore_ray.models.tiny import build_model, save_model_folder, train_tokenizer

    problems = list(generate(OrganismConfig(), "train", 500))
    tokenizer = train_tokenizer((solve_prompt(p.question) + p.solution() for p in problems), 512)
    model = build_model(ModelConfig(), tokenizer, seed=0)
    return save_model_folder(model, tokenizer, tmp_path_factory.mktemp("tiny-model"))


def _local_ray(tmp_path_factory: pytest.TempPathFactory):
    """A local Ray cluster with its temp dir under the session's (short: Ray's socket paths must
    stay under ~107 characters), shut down even when the test fails."""
    import ray

    temp_dir = tmp_path_factory.mktemp("ray")
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=str(temp_dir), configure_logging=False)
    try:
        yield temp_dir
    finally:
        ray.shutdown()


@dataclass
class StoppedJob:
    """The miniature's first submission, stopped with `ray job stop` once the policy had a
    registered checkpoint (as a stopped job or a crashed driver leaves a run)."""
    status: str
    policy_had_manifest: bool
    """Whether the policy stage had finished when the job was stopped (it must not have)."""


@dataclass
class MiniatureJob:
    out: Path
    status: str
    submit_output: str
    logs: str
    scrapes: list
    """The head's metrics pages read while the job ran (tests/ray_head.Scrape)."""
    stopped: StoppedJob | None
    """None when GLORE_MINIATURE_RUN held a finished run (only the evaluation re-ran)."""


def _submit(head, job_id: str, out: Path, args: list[str], *wait: str) -> subprocess.Popen:
    from glore_ray.testing.local_cluster import RAY

    return subprocess.Popen(
        [RAY, "job", "submit", f"--address={head.address}", f"--working-dir={REPO}",
         f"--runtime-env={REPO / 'cluster' / 'runtime_env.yaml'}", f"--submission-id={job_id}", *wait,
         "--", sys.executable, "jobs/pipeline.py", "--out", str(out), *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _stop_at_the_first_policy_checkpoint(head, out: Path, args: list[str]) -> StoppedJob:
    from ray.job_submission import JobSubmissionClient

    from glore_ray.testing.local_cluster import ray_cli

    _submit(head, "glore-miniature-stopped", out, args, "--no-wait").communicate(timeout=120)
    client = JobSubmissionClient(head.address)
    # A checkpoint counts once the controller has registered it; one only on disk is not restored.
    deadline = time.monotonic() + 400
    while not list((out / "policy" / "model.ray_train").glob("*/checkpoint_manager_snapshot.json")):
        status = client.get_job_status("glore-miniature-stopped").value
        assert status in ("PENDING", "RUNNING"), client.get_job_logs("glore-miniature-stopped")[-5000:]
        assert time.monotonic() < deadline, "no policy checkpoint within 400 s"
        time.sleep(0.5)
    ray_cli("job", "stop", f"--address={head.address}", "glore-miniature-stopped")
    return StoppedJob(client.get_job_status("glore-miniature-stopped").value,
                      (out / "policy" / "manifest.json").exists())


@pytest.fixture(scope="session")
def miniature_job(tmp_path_factory: pytest.TempPathFactory) -> MiniatureJob:
    """The miniature pipeline (tests/miniature.py) the way users run it: a head started with
    `ray start --head`, `jobs/pipeline.py` submitted with `ray job submit` and the project's runtime
    env, stopped with `ray job stop` while the policy trains and submitted again (it must resume:
    test_jobs), its metrics endpoint read every 0.5 s meanwhile, its logs read back with `ray job
    logs`; then the head stops. Once per session: its run directory and exported models serve
    test_pipeline, test_jobs and test_serve. GLORE_MINIATURE_RUN names a directory to keep the run
    in between sessions (the job then skips its up-to-date stages and re-runs only the evaluation)."""
    from ray.job_submission import JobSubmissionClient

    from glore_ray.testing.local_cluster import ray_cli
    from tests.miniature import MINIATURE, as_sets
    from tests.ray_head import MetricsScraper, ray_head

    kept = os.environ.get("GLORE_MINIATURE_RUN")
    out = Path(kept) if kept else tmp_path_factory.mktemp("pipeline") / "run"
    finished = (out / "report.json").exists()
    args = (["--from", "evaluate"] if finished else []) + as_sets(MINIATURE)
    with ray_head(tmp_path_factory.mktemp("head")) as head:
        with MetricsScraper(head.metrics_url, out) as scraper:
            stopped = None if finished else _stop_at_the_first_policy_checkpoint(head, out, args)
            submit_output, _ = _submit(head, "glore-miniature", out, args).communicate(timeout=850)
        status = JobSubmissionClient(head.address).get_job_status("glore-miniature").value
        logs = ray_cli("job", "logs", f"--address={head.address}", "glore-miniature")
    return MiniatureJob(out, status, submit_output, logs, scraper.scrapes, stopped)


@pytest.fixture(scope="session")
def miniature_run(miniature_job: MiniatureJob) -> Path:
    """The run directory of the miniature job, which must have succeeded."""
    assert miniature_job.status == "SUCCEEDED", miniature_job.submit_output[-5000:]
    return miniature_job.out


@pytest.fixture
def ray_local(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh local Ray cluster for one test."""
    yield from _local_ray(tmp_path_factory)


@pytest.fixture(scope="module")
def ray_module(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One local Ray cluster for a module of tests (a cluster start costs ~5 s)."""
    yield from _local_ray(tmp_path_factory)
