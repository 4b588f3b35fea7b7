"""The model deployments of the Serve app: a generator (policy, global and local refiners) or a step
scorer (ORM, SORM, or the likelihood reranker in the ORM's place) on one model folder, each with
its own replicas, resources, autoscaling and dynamic batching from `serve.<model>` in the config.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ray import serve

from glore_ray.config import EngineConfig
from glore_ray.core.generation import Generation, Sampling
from glore_ray.models.engines import load_model
from glore_ray.models.scorers import load_scorer


class Batching:
    """A deployment whose BATCHED methods are `@serve.batch`es. Their settings are the deployment's
    `user_config`: a Serve config file's per-deployment `user_config` retunes live replicas
    without reloading their models."""

    BATCHED: tuple[str, ...] = ("_batch",)

    def reconfigure(self, batching: dict) -> None:
        for name in self.BATCHED:
            getattr(self, name).set_max_batch_size(batching["max_batch_size"])
            getattr(self, name).set_batch_wait_timeout_s(batching["batch_wait_timeout_s"])


class _BatchedModel(Batching):
    """Runs merged batches on one worker thread (so the replica's event loop keeps queueing
    requests while the model computes) and, after a failed call, lets Serve's health check probe
    the model and replace the replica if it is broken."""

    def _setup(self) -> None:
        self._worker = ThreadPoolExecutor(1)
        self._failed = False

    async def _run(self, fn: Callable, *args) -> Any:
        try:
            result = await asyncio.get_running_loop().run_in_executor(self._worker, fn, *args)
        except Exception:
            self._failed = True
            raise
        self._failed = False
        return result

    async def _per_solution(self, fn: Callable, requests: list[tuple[list[str], list[list[str]]]]) -> list[list[Any]]:
        """One `fn(questions, steps)` call for a merged batch of requests, its results split back."""
        questions = [q for qs, _ in requests for q in qs]
        steps = [s for _, ss in requests for s in ss]
        values = iter(await self._run(fn, questions, steps))
        return [[next(values) for _ in qs] for qs, _ in requests]

    async def check_health(self) -> None:
        if self._failed:  # a probe only after a failure: an idle healthy replica costs nothing
            await self._run(self._probe)

    async def ping(self) -> str:
        return "ok"


@serve.deployment
class GeneratorDeployment(_BatchedModel):
    """A generation engine (vLLM, or transformers) on one model folder. The policy's also reads the
    likelihood reranker's term (`mean_logprobs`) from its own weights."""

    BATCHED = ("_batch", "_likelihood_batch")

    def __init__(self, model_dir: str, engine: EngineConfig):
        self.engine = load_model(model_dir, "generator", engine)
        self._setup()

    async def generate(self, prompts: list[str], sampling: Sampling) -> list[Generation]:
        return await self._batch((list(prompts), sampling))

    @serve.batch
    async def _batch(self, requests: list[tuple[list[str], Sampling]]) -> list[list[Generation]]:
        # One engine call for the batch, each prompt with its own request's settings.
        prompts = [p for ps, _ in requests for p in ps]
        samplings = [s for ps, s in requests for _ in ps]
        generations = iter(await self._run(self.engine.generate, prompts, samplings))
        return [[next(generations) for _ in ps] for ps, _ in requests]

    async def mean_logprobs(self, questions: list[str], steps: list[list[str]]) -> list[list[float]]:
        return await self._likelihood_batch((list(questions), [list(s) for s in steps]))

    @serve.batch
    async def _likelihood_batch(self, requests: list[tuple[list[str], list[list[str]]]]) -> list[list[list[float]]]:
        # One engine call for the batch, on the same worker thread as generation.
        return await self._per_solution(self.engine.mean_logprobs, requests)

    def _probe(self) -> None:
        self.engine.generate(["1 + 1 ="], Sampling(temperature=0, max_tokens=1))


@serve.deployment
class ScorerDeployment(_BatchedModel):
    """A trained ORM or SORM folder, or a likelihood reranker's: P(good) at the end of every step."""

    def __init__(self, model_dir: str):
        self.scorer = load_scorer(model_dir)
        self._setup()

    async def score(self, questions: list[str], steps: list[list[str]]) -> list[list[float]]:
        return await self._batch((list(questions), [list(s) for s in steps]))

    @serve.batch
    async def _batch(self, requests: list[tuple[list[str], list[list[str]]]]) -> list[list[list[float]]]:
        return await self._per_solution(self.scorer.score, requests)

    def _probe(self) -> None:
        self.scorer.score(["1 + 1"], [["1 + 1 = 2"]])
