"""The evaluation stage: the policy, the reward models and the refinement ensemble on the evaluated
split, batch by batch (`core.evaluation.evaluate_batch`), with the models in Ray actors.

Each model runs in its own actor (a model server with its own CPUs/GPUs from `eval.pool`,
`pool.replicas` sets of them), or, when the pool asks for a fraction of a CPU and no GPU (a
laptop), all of them in one actor that imports vLLM and torch once. The driver streams the
questions in batches to the replica sets, behind the engine and scorer interfaces the Serve app's
ensemble uses too. Every question's record goes to `decisions.jsonl`, and the report is built from
them.
"""

from __future__ import annotations

import itertools
import json
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from glore_ray.capacity import request, require
from glore_ray.config import EngineConfig, EnginePoolConfig, EnsembleSettings, EvalConfig, SamplingConfig
from glore_ray.config.ensemble import EVAL_SCORERS
from glore_ray.core.evaluation import evaluate_batch, evaluated, ranker
from glore_ray.core.generation import Generation, Sampling
from glore_ray.core.problems import load_problems
from glore_ray.core.quarantine import Quarantine
from glore_ray.metrics import StageMetrics
from glore_ray.models.engines import load_model
from glore_ray.models.remote import RemoteModel
from glore_ray.models.scorers import reranker_weights, with_reranker
from glore_ray.pipeline.runner import StageContext

log = logging.getLogger(__name__)
SERVER_WAIT_LOG_S = 60.0


class ModelServer:
    """Models in an actor (`models.engines.load_model`: generation engines or step scorers), each
    call naming its model. The actor runs one call at a time: a vLLM engine is not thread-safe."""

    def __init__(self, models: dict[str, str], engine: EngineConfig):
        self.models = {name: load_model(path, "scorer" if name in EVAL_SCORERS else "generator", engine)
                       for name, path in models.items()}

    def ready(self) -> bool:
        return True

    def generate(self, model: str, prompts: Sequence[str], sampling: Sampling) -> list[Generation]:
        return self.models[model].generate(prompts, sampling)

    def score(self, model: str, questions: Sequence[str], steps: Sequence[Sequence[str]]) -> list[list[float]]:
        return self.models[model].score(questions, steps)

    def mean_logprobs(self, model: str, questions: Sequence[str], steps: Sequence[Sequence[str]]) -> list[list[float]]:
        return self.models[model].mean_logprobs(questions, steps)


def _ray_get(name: str, ref):
    import ray

    return ray.get(ref)


def server_groups(pool: EnginePoolConfig, models: dict[str, str]) -> list[dict[str, str]]:
    """The models each server hosts: all in one when the pool asks for a fraction of a CPU and no
    GPU (six processes that each import vLLM and torch cost a 2-core laptop ~20 s), else one each."""
    if pool.gpus_per_replica == 0 and pool.cpus_per_replica < 1:
        return [dict(models)]
    return [{name: path} for name, path in models.items()]


def start_model_servers(pool: EnginePoolConfig, engine: EngineConfig, models: dict[str, str]) -> dict[str, RemoteModel]:
    """The model servers of `server_groups`, each with `eval.pool`'s resources per model hosted;
    they load in parallel. Returns once all answer, saying every SERVER_WAIT_LOG_S which ones still
    wait (for resources, or a node the autoscaler is adding) instead of hanging silently."""
    import ray

    groups = server_groups(pool, models)
    most = max(len(group) for group in groups)
    # One check, for the largest server: CPUs and GPUs per model it hosts, the custom resources (a node
    # type's marker) once per server.
    require("eval.pool", request(pool.cpus_per_replica * most, pool.gpus_per_replica * most, pool.accelerator_type,
                                 pool.resources))
    hosts = {}
    for group in groups:
        server = ray.remote(ModelServer).options(
            num_cpus=pool.cpus_per_replica * len(group), num_gpus=pool.gpus_per_replica * len(group),
            accelerator_type=pool.accelerator_type or None, resources=dict(pool.resources))
        hosts[", ".join(group)] = (server.remote(group, engine), group)
    ready = {handle.ready.remote(): names for names, (handle, _) in hosts.items()}
    while pending := ray.wait(list(ready), num_returns=len(ready), timeout=SERVER_WAIT_LOG_S)[1]:
        log.info(f"evaluate: waiting for model servers {'; '.join(ready[r] for r in pending)} "
                 f"({pool.cpus_per_replica} CPUs, {pool.gpus_per_replica} GPUs per model; "
                 "`ray status` shows pending demands)")
    return {name: RemoteModel(name, handle, _ray_get, routed=True)
            for handle, group in hosts.values() for name in group}


def stop_model_servers(models: dict[str, RemoteModel]) -> None:
    import ray

    for handle in {id(m.handle): m.handle for m in models.values()}.values():
        ray.kill(handle)


def run_evaluation(ctx: StageContext, eval: EvalConfig, ensemble: EnsembleSettings, engine: EngineConfig,
                   sampling: SamplingConfig) -> dict:
    """Evaluate on the first `eval.n_problems` problems of `test` with the models of the other
    inputs; writes `decisions.jsonl` and the report (report.json, report.md, plots) in the stage's
    directory. Returns counts for the manifest."""
    from glore_ray.core.report import build_report
    from glore_ray.core.report_markdown import write_report

    t0 = time.perf_counter()
    test, models = ctx.inputs["test"], {name: path for name, path in ctx.inputs.items() if name != "test"}
    metrics = StageMetrics(ctx.name, ctx.run_name)
    quarantine = Quarantine()
    # eval.n_problems of them: few enough to hold, and the progress line counts against their number.
    all_problems = list(itertools.islice(load_problems(test, quarantine=quarantine), eval.n_problems))
    if quarantine:  # before any model loads: the data stage wrote this file, so it was changed since
        raise ValueError(f"{test}: {quarantine.summary()} in a file the data stage wrote")
    problems, n_questions = iter(all_problems), len(all_problems)
    served = {name: path for name, path in models.items() if name != "reranker"}
    # The likelihood reranker is the ORM's and the policy's servers combined: no second policy copy.
    weights = reranker_weights(models["reranker"], models["orm"], models["policy"]) if "reranker" in models else None
    with ThreadPoolExecutor(eval.pool.replicas) as threads:  # the replica sets load in parallel
        replicas = list(threads.map(lambda _: start_model_servers(eval.pool, engine, served),
                                    range(eval.pool.replicas)))
    log.info(f"evaluate: {len(served) * len(replicas)} models up in {time.perf_counter() - t0:.0f} s")
    ranked = [with_reranker(m, weights) for m in replicas]
    batches = iter(lambda: list(itertools.islice(problems, eval.pool.batch_size)), [])
    records: list[dict] = []
    decisions = Path(ctx.dir) / "decisions.jsonl"
    try:
        with decisions.open("w") as sink, ThreadPoolExecutor(len(replicas)) as threads:
            # One batch in flight per replica set; results are written in input order.
            while window := [threads.submit(evaluate_batch, m, b, eval, ensemble, sampling) for m, b in zip(ranked, batches)]:
                for future in window:
                    batch, generated = future.result()
                    for name, amount in generated.items():
                        metrics.record(name, amount)
                    metrics.record("questions", len(batch))
                    for record in batch:
                        metrics.record("chosen_candidates", candidate=record["decision"]["chosen"])
                        sink.write(json.dumps(record) + "\n")
                        records.append(record)
                log.info(f"  evaluate: {len(records)} of {n_questions} questions, {time.perf_counter() - t0:.0f} s")
    finally:
        for model_set in replicas:
            stop_model_servers(model_set)
    used = evaluated(ensemble, eval, sampling.max_tokens)
    settings = {f: getattr(used, f) for f in ("always_refine", "orm_threshold", "step_threshold", "orm_step_threshold",
                                              "global_offset", "local_offset", "refine_samples")}
    settings |= {"max_rounds": eval.max_rounds, "ranked_by": ranker(models)}
    report = build_report(records, eval.k, settings, ctx.run_name, eval.split)
    files = write_report(report, ctx.dir)
    log.info(f"evaluate: report -> {', '.join(str(f) for f in files)}")
    return {"questions": len(records)}
