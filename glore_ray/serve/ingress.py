"""The Serve app's HTTP ingress: FastAPI over the same `RefinementEnsemble` the evaluation runs,
with the model deployments behind handles.

    POST /v1/solve   {"question", optional "draft", optional "settings"} -> the decision
    GET  /v1/models, POST /v1/chat/completions, POST /v1/completions   OpenAI-compatible (openai_api.py)
    GET  /healthz    200 when all five models answer, else 503 naming the ones that do not
    GET  /docs, /openapi.json
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException as StarletteHTTPException

from glore_ray.config import ServeConfig
from glore_ray.config.ensemble import MODELS, EnsembleSettings
from glore_ray.core.ensemble import Decision, RefinementEnsemble, ensemble_models, iterate
from glore_ray.core.generation import Generation
from glore_ray.metrics import StageMetrics
from glore_ray.models.remote import RemoteModel
from glore_ray.models.scorers import with_reranker
from glore_ray.serve.api import RequestError, SolveRequest, SolveResponse, authorized, ensemble_settings, load_token
from glore_ray.serve.deployments import Batching
from glore_ray.serve.openai_api import ENSEMBLE_MODEL, OPENAI_PATHS, POLICY_MODEL, add_openai_routes, openai_error

T = TypeVar("T")
INGRESS_CONCURRENT_BATCHES = 2
"""Request batches an ingress replica runs at once: one computes while the next one fills."""


class ModelUnavailable(RuntimeError):
    """A model deployment failed or did not answer in time; the request gets a 503."""

    def __init__(self, model: str, reason: str):
        super().__init__(f"the {model} model is unavailable: {reason}")
        self.model = model


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


class _Unauthorized(Exception):
    pass


def _printable(part: object) -> str:
    """A request's own text, safe to answer with: a lone surrogate escaped, not a failed encoding."""
    return str(part).encode("utf-8", "backslashreplace").decode("utf-8")


def _error(request: Request, status: int, message: str, param: str | None = None, headers: dict | None = None,
           **fields) -> JSONResponse:
    """An error in the shape the route's clients read: OpenAI's `{"error": {...}}` on the OpenAI
    routes, `{"detail": ...}` (with any further `fields`) on /v1/solve."""
    if request.url.path.endswith(OPENAI_PATHS):  # under any route prefix
        return JSONResponse(openai_error(status, message, param), status_code=status, headers=headers)
    return JSONResponse({"detail": message, **fields}, status_code=status, headers=headers)


async def _unauthorized(request: Request, exc: _Unauthorized) -> JSONResponse:
    return _error(request, 401, "missing or wrong bearer token (Authorization: Bearer <token>)",
                  headers={"WWW-Authenticate": "Bearer"})


async def _invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
    """Each problem as `field: message`, without echoing the offending value (which may not even
    be encodable: NaN, a lone surrogate), so that no body can turn a 422 into a 500."""
    problems, fields = [], []
    for error in exc.errors():
        field = ".".join(_printable(p) for p in error.get("loc", ()) if p != "body") or "body"
        problems.append(f"{field}: {_printable(error.get('msg', 'invalid'))}")
        fields.append(field)
    return _error(request, 422, "; ".join(problems) or "invalid request", fields[0] if fields else None)


async def _bad_request(request: Request, exc: RequestError) -> JSONResponse:
    return _error(request, exc.status, str(exc), exc.param)


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    """Starlette's own refusals (a body it cannot parse: 400), in the route's error shape."""
    return _error(request, exc.status_code, str(exc.detail), headers=exc.headers)


async def _model_unavailable(request: Request, exc: ModelUnavailable) -> JSONResponse:
    return _error(request, 503, f"{exc}; retry shortly", headers={"Retry-After": "1"}, model=exc.model)


def build_api(ingress, token: str | None) -> FastAPI:
    """The HTTP app of one ingress replica, its bearer token its own (two apps in one process do
    not share one); the routes call the replica's `healthz`, `decide` (/v1/solve and the OpenAI
    routes' `glore`) and `draft` (their `glore-policy`)."""
    api = FastAPI(title="glore-ray refinement ensemble", version="1",
                  description="GLoRe: a policy draft refined globally and locally, reranked by the ORM.")
    api.add_exception_handler(_Unauthorized, _unauthorized)
    api.add_exception_handler(RequestValidationError, _invalid_request)
    api.add_exception_handler(RequestError, _bad_request)
    api.add_exception_handler(ModelUnavailable, _model_unavailable)
    api.add_exception_handler(StarletteHTTPException, _http_error)

    def require_token(request: Request) -> None:
        if not authorized(request.headers.get("authorization"), token):
            raise _Unauthorized()

    @api.get("/healthz")
    async def healthz() -> JSONResponse:
        return await ingress.healthz()

    @api.post("/v1/solve", response_model=SolveResponse, response_model_by_alias=True,
              dependencies=[Depends(require_token)],
              responses={401: {"description": "missing or wrong bearer token"},
                         422: {"description": "invalid request"},
                         503: {"description": "a model failed or did not answer in time"}})
    async def solve(request: SolveRequest) -> SolveResponse:
        return SolveResponse.from_rounds(await ingress.decide(request))

    add_openai_routes(api, ingress, Depends(require_token))
    return api


@serve.deployment
@serve.ingress()
class EnsembleIngress(Batching):
    """Batches whole requests: the ensemble solves a batch of questions with one call per model
    and step, so every model deployment sees the batch (and merges batches of other ingress
    replicas in its own `@serve.batch`)."""

    def __init__(self, handles: dict[str, DeploymentHandle], ensemble: EnsembleSettings, cfg: ServeConfig,
                 run_name: str, reranker_weights: list[float] | None = None):
        if sorted(handles) != sorted(MODELS):
            raise ValueError(f"the ingress needs a handle per model ({', '.join(MODELS)}); got {sorted(handles)}")
        self.cfg, self.ensemble, self.handles = cfg, ensemble, handles
        self.metrics = StageMetrics("serve", run_name)

        def resolve(model: str, response) -> Any:
            return _result(model, response, cfg.model_timeout_s)

        # With a reranker, the policy deployment reads its likelihood: one copy of the policy.
        self.models = with_reranker({name: RemoteModel(name, handle, resolve) for name, handle in self.handles.items()},
                                    reranker_weights)
        # The ensemble blocks on its handle calls: it runs on these threads, never on the event loop.
        self._threads = ThreadPoolExecutor(INGRESS_CONCURRENT_BATCHES)
        self.token = load_token(cfg)

    def __serve_build_asgi_app__(self) -> FastAPI:
        return build_api(self, self.token)

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

    async def decide(self, request: SolveRequest) -> list[Decision]:
        """Each round's deciding Decision for one request (`core.ensemble.iterate`; one round unless
        `max_rounds`), batched with the requests of its moment."""
        async def run(settings: EnsembleSettings) -> list[Decision]:
            decided = await self._batch((request.question, request.draft, settings, request.settings.max_rounds or 1))
            self.metrics.record("chosen_candidates", candidate=decided[0].chosen)
            return decided

        return await self._recorded(request, run, ENSEMBLE_MODEL)

    async def draft(self, request: SolveRequest) -> Generation:
        """The policy's greedy draft alone (the OpenAI routes' `glore-policy`: the baseline)."""
        async def run(settings: EnsembleSettings) -> Generation:
            ensemble = RefinementEnsemble.of(ensemble_models(self.models), settings)
            (generation,) = await asyncio.get_running_loop().run_in_executor(
                self._threads, ensemble.drafts, [request.question])
            return generation

        return await self._recorded(request, run, POLICY_MODEL)

    async def _recorded(self, request: SolveRequest, run: Callable[[EnsembleSettings], Awaitable[T]], model: str) -> T:
        """`run` with the request's settings, its status and latency recorded."""
        t0, status = time.perf_counter(), "500"
        try:
            result = await run(ensemble_settings(request, self.ensemble, self.cfg))
            status = "200"
            return result
        except RequestError as e:
            status = str(e.status)
            raise
        except ModelUnavailable:
            status = "503"
            raise
        finally:
            # Requests FastAPI rejects before this method (401, schema 422s) are in Serve's own
            # per-route metrics.
            self.metrics.record("serve_requests", status=status, model=model)
            self.metrics.record("serve_latency_seconds", time.perf_counter() - t0)

    @serve.batch(max_concurrent_batches=INGRESS_CONCURRENT_BATCHES)
    async def _batch(self, requests: list[tuple[str, str | None, EnsembleSettings, int]]) -> list[list[Decision]]:
        decided: list[list[Decision]] = [[] for _ in requests]
        loop = asyncio.get_running_loop()
        # One ensemble call per distinct settings and rounds.
        for settings, rounds in dict.fromkeys((s, r) for _, _, s, r in requests):
            members = [i for i, (_, _, s, r) in enumerate(requests) if (s, r) == (settings, rounds)]
            questions = [requests[i][0] for i in members]
            ensemble = RefinementEnsemble.of(ensemble_models(self.models), settings)

            def solve() -> list[list[Decision]]:
                first = ensemble.solve(questions, [requests[i][1] for i in members])
                return iterate(ensemble, questions, first, rounds, settings.sample_temperature, settings.seed)

            for decisions in await loop.run_in_executor(self._threads, solve):
                for i, decision in zip(members, decisions, strict=True):
                    decided[i].append(decision)
        return decided
