"""The Ray Serve app: the ORM-reranked refinement ensemble as an HTTP service.

One deployment per model (policy, global and local refiners: generators; ORM, SORM: step
scorers), each with its own replicas, resources, autoscaling and dynamic batching from
`serve.<model>` in the config, loading the folders a pipeline run exported. The FastAPI ingress
(`serve/ingress.py`) runs the same `RefinementEnsemble` as the evaluation, with the model
deployments (`serve/deployments.py`) behind handles.

Start it with `glore serve --config <yaml> --models <pipeline out dir>`, `serve run
cluster/serve/glore.yaml`, or the KubeRay RayService in `cluster/kuberay/`.
"""

from __future__ import annotations

import logging
import signal
import time
from pathlib import Path
from typing import Any

from ray import serve

from glore_ray.capacity import request, require
from glore_ray.config import GloreConfig, ModelDeploymentConfig, ServeConfig
from glore_ray.config.ensemble import GENERATORS, MODELS
from glore_ray.serve.deployments import GeneratorDeployment, ScorerDeployment
from glore_ray.serve.ingress import EnsembleIngress

log = logging.getLogger(__name__)
APP_NAME = "glore"


def deployment_options(d: ModelDeploymentConfig) -> dict:
    """Serve options of one deployment: fixed replicas, or autoscaling between min and max; the
    batching settings as its user_config (see `deployments.Batching`)."""
    actor = ({"num_cpus": d.cpus, "num_gpus": d.gpus} | ({"accelerator_type": d.accelerator_type}
                                                          if d.accelerator_type else {})
             | ({"resources": dict(d.resources)} if d.resources else {}))
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
    """The app over the five model folders (`layout.RunLayout.model_dirs` of a run). With a
    `reranker` folder, the likelihood reranker ranks in the ORM's place: the ingress combines the
    `orm` deployment's values with the `policy` deployment's log-probs, so the policy's weights are
    held once. (An `orm` entry that is itself a reranker folder loads its own copy of the policy in
    the ORM's replica: what `bench/serve.py` measures against.)"""
    from glore_ray.models.scorers import RERANKER_FILE, reranker_weights

    missing = [f"{name}: {path}" for name, path in models.items()
               if not any((Path(path) / f).is_file() for f in ("config.json", RERANKER_FILE))]
    if missing:
        raise FileNotFoundError("no exported model folder for " + "; ".join(missing)
                                + " (run `glore pipeline` with this config first)")
    weights = reranker_weights(models["reranker"], models["orm"], models["policy"]) if "reranker" in models else None
    bound = {}
    for name in MODELS:
        options = deployment_options(getattr(cfg.serve, name))
        if name in GENERATORS:
            bound[name] = GeneratorDeployment.options(name=name, **options).bind(models[name], cfg.engine)
        else:
            bound[name] = ScorerDeployment.options(name=name, **options).bind(models[name])
    return EnsembleIngress.options(name="ensemble", **deployment_options(cfg.serve.ingress)).bind(
        bound, ensemble=cfg.ensemble.with_max_tokens(cfg.sampling.max_tokens), cfg=cfg.serve, run_name=cfg.run_name,
        reranker_weights=weights)


def app_builder(args: dict) -> serve.Application:
    """For Serve config files: `import_path: glore_ray.serve.app:app_builder` with
    `args: {config: <yaml>, models: <pipeline out dir>, set: [KEY=VALUE, ...]}`."""
    from glore_ray.config import load_config
    from glore_ray.layout import RunLayout

    unknown = set(args) - {"config", "models", "set"}
    if unknown or "models" not in args:
        raise ValueError(f"app args: need `models` (and optionally `config`, `set`); got {sorted(args)}")
    cfg = load_config(args.get("config"), list(args.get("set", [])))
    return build_app(cfg, RunLayout(args["models"]).model_dirs(cfg))


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def run_server(app: serve.Application, cfg: ServeConfig) -> None:
    """`glore serve`: deploy on the connected cluster and serve until interrupted; a deployment no
    node can ever hold fails here instead of leaving `serve.run` waiting."""
    for name in ("ingress", *MODELS):
        d = getattr(cfg, name)
        require(f"serve.{name}", request(d.cpus, d.gpus, d.accelerator_type, d.resources))
    serve.start(http_options={"host": cfg.host, "port": cfg.port})
    t0 = time.perf_counter()
    serve.run(app, name=APP_NAME, route_prefix="/")
    url = f"http://{cfg.host}:{cfg.port}"
    log.info(f"serve: up in {time.perf_counter() - t0:.0f} s: POST {url}/v1/solve; OpenAI-compatible at {url}/v1 "
             f"(models glore, glore-policy); GET {url}/healthz, docs {url}/docs")
    signal.signal(signal.SIGTERM, _interrupt)  # `kill`, `ray job stop`, a pod's termination: as Ctrl-C
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        log.info("serve: shutting down")
        serve.delete(APP_NAME)
