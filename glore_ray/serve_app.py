"""The Ray Serve app: the ORM-reranked refinement ensemble as an HTTP service.

One deployment per model (policy, global and local refiners: generators; ORM, SORM: step
scorers), each with its own replicas, resources, autoscaling and dynamic batching from
`serve.<model>` in the config, loading the folders a pipeline run exported. The FastAPI ingress
runs the same `RefinementEnsemble` as the evaluation, with the model deployments behind handles:

    POST /v1/solve   {"question", optional "draft", optional "settings"} -> the decision
    GET  /healthz    200 when all five models answer, else 503 naming the ones that do not
    GET  /docs, /openapi.json

Start it with `glore serve --config <yaml> --models <pipeline out dir>`, `serve run
cluster/serve/glore.yaml`, or the KubeRay RayService in `cluster/kuberay/`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import signal
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve

from glore_ray.config import GENERATORS, SERVED_MODELS, EngineConfig, GloreConfig, ModelDeploymentConfig, ServeConfig
from glore_ray.engines import Generation, Sampling
from glore_ray.ensemble import Decision, EnsembleSettings, RefinementEnsemble
from glore_ray.metrics import StageMetrics
from glore_ray.serve_api import (RequestError, SolveRequest, SolveResponse, authorized, ensemble_settings,
                                 load_token)

APP_NAME = "glore"
INGRESS_CONCURRENT_BATCHES = 2
"""Request batches an ingress replica runs at once: one computes while the next one fills."""
api = FastAPI(title="glore-ray refinement ensemble", version="1",
              description="GLoRe: a policy draft refined globally and locally, reranked by the ORM.")


class ModelUnavailable(RuntimeError):
    """A model deployment failed or did not answer in time; the request gets a 503."""

    def __init__(self, model: str, reason: str):
        super().__init__(f"the {model} model is unavailable: {reason}")
        self.model = model


# ---- model deployments ---------------------------------------------------------------------------

class _Batching:
    """A deployment whose `_batch` method is a `@serve.batch`. Its settings are the deployment's
    `user_config`: a Serve config file's per-deployment `user_config` retunes live replicas
    without reloading their models."""

    def reconfigure(self, batching: dict) -> None:
        self._batch.set_max_batch_size(batching["max_batch_size"])
        self._batch.set_batch_wait_timeout_s(batching["batch_wait_timeout_s"])


class _BatchedModel(_Batching):
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

    async def check_health(self) -> None:
        if self._failed:  # a probe only after a failure: an idle healthy replica costs nothing
            await self._run(self._probe)

    async def ping(self) -> str:
        return "ok"


@serve.deployment
class GeneratorDeployment(_BatchedModel):
    """A generation engine (vLLM, or transformers) on one model folder."""

    def __init__(self, model_dir: str, engine: dict):
        from glore_ray.engines import make_engine

        self.engine = make_engine(model_dir, EngineConfig(**engine))
        self._setup()

    async def generate(self, prompts: list[str], sampling: Sampling) -> list[Generation]:
        return await self._batch((list(prompts), sampling))

    @serve.batch
    async def _batch(self, requests: list[tuple[list[str], Sampling]]) -> list[list[Generation]]:
        # One engine call per distinct sampling setting in the batch (the ensemble uses one: greedy).
        results: list[list[Generation]] = [[] for _ in requests]
        for sampling in dict.fromkeys(s for _, s in requests):
            members = [i for i, (_, s) in enumerate(requests) if s == sampling]
            flat = [p for i in members for p in requests[i][0]]
            generations = iter(await self._run(self.engine.generate, flat, sampling))
            for i in members:
                results[i] = [next(generations) for _ in requests[i][0]]
        return results

    def _probe(self) -> None:
        self.engine.generate(["1 + 1 ="], Sampling(temperature=0, max_tokens=1))


@serve.deployment
class ScorerDeployment(_BatchedModel):
    """A trained ORM or SORM folder, or a likelihood reranker's: P(good) at the end of every step."""

    def __init__(self, model_dir: str):
        from glore_ray.reward_models import load_scorer

        self.scorer = load_scorer(model_dir)
        self._setup()

    async def score(self, questions: list[str], steps: list[list[str]]) -> list[list[float]]:
        return await self._batch((list(questions), [list(s) for s in steps]))

    @serve.batch
    async def _batch(self, requests: list[tuple[list[str], list[list[str]]]]) -> list[list[list[float]]]:
        questions = [q for qs, _ in requests for q in qs]
        steps = [s for _, ss in requests for s in ss]
        values = iter(await self._run(self.scorer.score, questions, steps))
        return [[next(values) for _ in qs] for qs, _ in requests]

    def _probe(self) -> None:
        self.scorer.score(["1 + 1"], [["1 + 1 = 2"]])


# ---- the ingress ---------------------------------------------------------------------------------

def _result(model: str, response, timeout_s: float) -> Any:
    """A model deployment's answer, or ModelUnavailable naming the model."""
    try:
        return response.result(timeout_s=timeout_s)
    except TimeoutError as e:
        response.cancel()
        raise ModelUnavailable(model, f"no answer within {timeout_s:g} s") from e
    except Exception as e:  # the replica raised, died or was unreachable
        reason = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise ModelUnavailable(model, reason) from e


class HandleEngine:
    """The ensemble's Engine interface over a generator deployment."""

    def __init__(self, name: str, handle, timeout_s: float):
        self.name, self.handle, self.timeout_s = name, handle, timeout_s

    def generate(self, prompts: Sequence[str], sampling: Sampling) -> list[Generation]:
        return _result(self.name, self.handle.generate.remote(list(prompts), sampling), self.timeout_s)


class HandleScorer:
    """The ensemble's StepScorer interface over a scorer deployment."""

    def __init__(self, name: str, handle, timeout_s: float):
        self.name, self.handle, self.timeout_s = name, handle, timeout_s

    def score(self, questions: Sequence[str], steps: Sequence[Sequence[str]]) -> list[list[float]]:
        response = self.handle.score.remote(list(questions), [list(s) for s in steps])
        return _result(self.name, response, self.timeout_s)


def _require_token(request: Request) -> None:
    if not authorized(request.headers.get("authorization"), request.app.state.token):
        raise _Unauthorized()


class _Unauthorized(Exception):
    pass


@api.exception_handler(_Unauthorized)
async def _unauthorized(request: Request, exc: _Unauthorized) -> JSONResponse:
    return JSONResponse({"detail": "missing or wrong bearer token (Authorization: Bearer <token>)"},
                        status_code=401, headers={"WWW-Authenticate": "Bearer"})


@api.exception_handler(RequestError)
async def _bad_request(request: Request, exc: RequestError) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=422)


@api.exception_handler(ModelUnavailable)
async def _model_unavailable(request: Request, exc: ModelUnavailable) -> JSONResponse:
    return JSONResponse({"detail": f"{exc}; retry shortly", "model": exc.model}, status_code=503,
                        headers={"Retry-After": "1"})


@serve.deployment
@serve.ingress(api)
class EnsembleIngress(_Batching):
    """Batches whole requests: the ensemble solves a batch of questions with one call per model
    and step, so every model deployment sees the batch (and merges batches of other ingress
    replicas in its own `@serve.batch`)."""

    def __init__(self, policy, global_refiner, local_refiner, orm, sorm, cfg: ServeConfig, max_tokens: int,
                 run_name: str):
        self.cfg, self.max_tokens = cfg, max_tokens
        self.metrics = StageMetrics("serve", run_name)
        timeout = cfg.model_timeout_s
        self.handles = {"policy": policy, "global_refiner": global_refiner, "local_refiner": local_refiner,
                        "orm": orm, "sorm": sorm}
        self.models = {name: (HandleEngine if name in GENERATORS else HandleScorer)(name, h, timeout)
                       for name, h in self.handles.items()}
        # The ensemble blocks on its handle calls: it runs on these threads, never on the event loop.
        self._threads = ThreadPoolExecutor(INGRESS_CONCURRENT_BATCHES)
        api.state.token = load_token(cfg)

    @api.get("/healthz")
    async def healthz(self) -> JSONResponse:
        async def ping(name: str, handle) -> str:
            try:
                return await asyncio.wait_for(handle.ping.remote(), min(self.cfg.model_timeout_s, 5.0))
            except Exception as e:  # dead, restarting or too slow
                return f"the {name} model is unavailable: {type(e).__name__}"

        answers = await asyncio.gather(*(ping(name, h) for name, h in self.handles.items()))
        models = dict(zip(self.handles, answers))
        ok = all(v == "ok" for v in models.values())
        return JSONResponse({"status": "ok" if ok else "unavailable", "models": models}, status_code=200 if ok else 503)

    @api.post("/v1/solve", response_model=SolveResponse, response_model_by_alias=True,
              dependencies=[Depends(_require_token)],
              responses={401: {"description": "missing or wrong bearer token"},
                         422: {"description": "invalid request"},
                         503: {"description": "a model failed or did not answer in time"}})
    async def solve(self, request: SolveRequest) -> SolveResponse:
        t0, status = time.perf_counter(), "500"
        try:
            settings = ensemble_settings(request, self.cfg, self.max_tokens)
            decision = await self._batch((request.question, request.draft, settings))
            status = "200"
        except RequestError:
            status = "422"
            raise
        except ModelUnavailable:
            status = "503"
            raise
        finally:
            # Requests FastAPI rejects before this method (401, schema 422s) are in Serve's own
            # per-route metrics.
            self.metrics.record("serve_requests", status=status)
            self.metrics.record("serve_latency_seconds", time.perf_counter() - t0)
        self.metrics.record("chosen_candidates", candidate=decision.chosen)
        return SolveResponse.from_decision(decision)

    @serve.batch(max_concurrent_batches=INGRESS_CONCURRENT_BATCHES)
    async def _batch(self, requests: list[tuple[str, str | None, EnsembleSettings]]) -> list[Decision]:
        decisions: list[Decision | None] = [None] * len(requests)
        loop = asyncio.get_running_loop()
        for settings in dict.fromkeys(s for _, _, s in requests):  # one ensemble call per distinct settings
            members = [i for i, (_, _, s) in enumerate(requests) if s == settings]
            m = self.models
            ensemble = RefinementEnsemble(m["policy"], m["global_refiner"], m["local_refiner"], m["orm"], m["sorm"],
                                          settings)
            solved = await loop.run_in_executor(self._threads, ensemble.solve, [requests[i][0] for i in members],
                                                [requests[i][1] for i in members])
            for i, decision in zip(members, solved, strict=True):
                decisions[i] = decision
        return decisions


# ---- building and running the app ----------------------------------------------------------------

def deployment_options(d: ModelDeploymentConfig) -> dict:
    """Serve options of one deployment: fixed replicas, or autoscaling between min and max; the
    batching settings as its user_config (see `_Batching`)."""
    actor = {"num_cpus": d.cpus, "num_gpus": d.gpus} | ({"accelerator_type": d.accelerator_type}
                                                         if d.accelerator_type else {})
    options: dict[str, Any] = {"ray_actor_options": actor,
                               "max_ongoing_requests": d.max_ongoing_requests,
                               "user_config": {"max_batch_size": d.max_batch_size,
                                               "batch_wait_timeout_s": d.batch_wait_timeout_s}}
    if d.max_replicas > d.min_replicas:
        options["autoscaling_config"] = {"min_replicas": d.min_replicas, "max_replicas": d.max_replicas,
                                         "target_ongoing_requests": d.target_ongoing_requests}
    else:
        options["num_replicas"] = d.min_replicas
    return options


def build_app(cfg: GloreConfig, models: dict[str, str]) -> serve.Application:
    """The app over the five model folders (`pipeline.ensemble_models` of a run); with a `reranker`
    folder, the `orm` deployment serves it."""
    from glore_ray.reward_models import RERANKER_FILE

    missing = [f"{name}: {path}" for name, path in models.items()
               if not any((Path(path) / f).is_file() for f in ("config.json", RERANKER_FILE))]
    if missing:
        raise FileNotFoundError("no exported model folder for " + "; ".join(missing)
                                + " (run `glore pipeline` with this config first)")
    engine = dataclasses.asdict(cfg.engine)
    bound = {}
    for name in SERVED_MODELS:
        d = getattr(cfg.serve, name)
        options = deployment_options(d)
        if name in GENERATORS:
            bound[name] = GeneratorDeployment.options(name=name, **options).bind(models[name], engine)
        else:
            path = models.get("reranker", models[name]) if name == "orm" else models[name]
            bound[name] = ScorerDeployment.options(name=name, **options).bind(path)
    return EnsembleIngress.options(name="ensemble", **deployment_options(cfg.serve.ingress)).bind(
        **bound, cfg=cfg.serve, max_tokens=cfg.sampling.max_tokens, run_name=cfg.run_name)


def app_builder(args: dict) -> serve.Application:
    """For Serve config files: `import_path: glore_ray.serve_app:app_builder` with
    `args: {config: <yaml>, models: <pipeline out dir>, set: [KEY=VALUE, ...]}`."""
    from glore_ray.config import load_config
    from glore_ray.pipeline import ensemble_models

    unknown = set(args) - {"config", "models", "set"}
    if unknown or "models" not in args:
        raise ValueError(f"app args: need `models` (and optionally `config`, `set`); got {sorted(args)}")
    cfg = load_config(args.get("config"), list(args.get("set", [])))
    return build_app(cfg, ensemble_models(cfg, args["models"]))


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def run_server(app: serve.Application, cfg: ServeConfig, log: Callable[[str], None] = print) -> None:
    """`glore serve`: deploy on the connected cluster and serve until interrupted."""
    serve.start(http_options={"host": cfg.host, "port": cfg.port})
    t0 = time.perf_counter()
    serve.run(app, name=APP_NAME, route_prefix="/")
    url = f"http://{cfg.host}:{cfg.port}"
    log(f"serve: up in {time.perf_counter() - t0:.0f} s: POST {url}/v1/solve, GET {url}/healthz, docs {url}/docs")
    signal.signal(signal.SIGTERM, _interrupt)  # `kill`, `ray job stop`, a pod's termination: as Ctrl-C
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        log("serve: shutting down")
        serve.delete(APP_NAME)
