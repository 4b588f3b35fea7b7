"""The evaluation stage: the policy, both reward models and the refinement ensemble on the test split.

Each model runs in its own actor (a model server with its own CPUs/GPUs from `eval.pool`,
`pool.replicas` sets of them), or, when the pool asks for a fraction of a CPU and no GPU (a
laptop), all of them in one actor that imports vLLM and torch once. The driver streams the test
questions in batches and runs the same `RefinementEnsemble` the Serve app runs, with the actors behind the engine and
scorer interfaces. Per batch: a greedy draft and k samples per question, the reward models' step
values on all of them (the ORM, the SORM and, on the model organism, the PRM trained on exact step
labels), the ensemble once (where = SORM), and the local refiner again from the ORM's first low
step and from the exact first wrong step. Every question's record goes to `decisions.jsonl`;
`report.build_report` turns them into the report.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import json
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from glore_ray.capacity import request, require
from glore_ray.config import EngineConfig, EnginePoolConfig, GloreConfig
from glore_ray.core.problems import Problem, Quarantine, load_problems
from glore_ray.core.generation import Generation, Sampling
from glore_ray.core.ensemble import SCORERS, Decision, EnsembleSettings, RefinementEnsemble, first_bad_step
from glore_ray.core.grading import is_correct, scored_steps, split_steps
from glore_ray.metrics import StageMetrics
from glore_ray.models.engines import load_model
from glore_ray.models.remote import RemoteModel
from glore_ray.core.organism import check_solution, is_organism_problem
from glore_ray.core.prompts import solve_prompt

log = logging.getLogger(__name__)
SERVER_WAIT_LOG_S = 60.0
EVAL_SCORERS = (*SCORERS, "prm", "reranker")


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


def _ray_get(name: str, ref):
    import ray

    return ray.get(ref)


def ranker(models: dict) -> str:
    """The scorer that ranks candidates: the likelihood reranker when there is one, else the ORM."""
    return "reranker" if "reranker" in models else "orm"


def server_groups(pool: EnginePoolConfig, models: dict[str, str]) -> list[dict[str, str]]:
    """The models each server hosts: all in one when the pool asks for a fraction of a CPU and no
    GPU (six processes that each import vLLM and torch cost a 2-core laptop ~20 s), else one each."""
    if pool.gpus_per_replica == 0 and pool.cpus_per_replica < 1:
        return [dict(models)]
    return [{name: path} for name, path in models.items()]


def start_model_servers(cfg: GloreConfig, models: dict[str, str]) -> dict[str, RemoteModel]:
    """The model servers of `server_groups`, each with `eval.pool`'s resources per model hosted;
    they load in parallel. Returns once all answer, saying every SERVER_WAIT_LOG_S which ones still
    wait (for resources, or a node the autoscaler is adding) instead of hanging silently."""
    import ray

    pool = cfg.eval.pool
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
        hosts[", ".join(group)] = (server.remote(group, cfg.engine), group)
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


def _grade(problem: Problem, text: str) -> dict:
    """Correctness, and on the model organism the exact first wrong step and the checker's error
    kind (None elsewhere)."""
    check = check_solution(problem, text) if is_organism_problem(problem) else None
    return {"correct": is_correct(text, problem.gold), "first_wrong": check and check.first_wrong,
            "error_kind": check and check.kind}


def _orm_best(scores: list[list[float]]) -> int:
    """Index of the solution with the highest final ORM value (the first on ties)."""
    finals = [v[-1] if v else 0.0 for v in scores]
    return max(range(len(finals)), key=lambda i: (finals[i], -i))


def _oracle_bad_step(draft: str, first_wrong: int | None) -> int | None:
    """The exact first wrong reasoning step of a draft (None when it has none, or when only its
    answer line is wrong: there is no step to rewrite from)."""
    if first_wrong is None or first_wrong >= len(split_steps(draft)):
        return None
    return first_wrong


def iterate(ensemble: RefinementEnsemble, questions: Sequence[str], decisions: Sequence[Decision],
            max_rounds: int, temperature: float, seed: int) -> list[list[str]]:
    """Each round's answer text per question: round 1 is the ensemble's choice; in every later round
    a question whose chosen text scores below `orm_threshold` is refined again from that text (the
    ensemble with it as the draft, refining only below the threshold, its refiners sampling at
    `temperature` with a seed per round), the others keep theirs."""
    texts = [d.candidate(d.chosen) for d in decisions]
    scores = [d.orm_scores[d.chosen] for d in decisions]
    rounds = [list(texts)]
    for r in range(2, max_rounds + 1):
        again = dataclasses.replace(ensemble, settings=dataclasses.replace(
            ensemble.settings, always_refine=False, refine_temperature=temperature, seed=seed + r))
        todo = [i for i, score in enumerate(scores) if score < again.settings.orm_threshold]
        for i, d in zip(todo, again.solve([questions[i] for i in todo], [texts[i] for i in todo]) if todo else [],
                        strict=True):
            texts[i], scores[i] = d.candidate(d.chosen), d.orm_scores[d.chosen]
        rounds.append(list(texts))
    return rounds


def score_candidates(models: dict[str, RemoteModel], problems: Sequence[Problem],
                     decisions: Sequence[Decision]) -> list[dict[str, dict]]:
    """Each question's refinements (the candidates the ensemble ranks beside the draft), graded and
    read by every reward model: the population the report's candidate metrics are measured on."""
    todo = [(i, name, text) for i, d in enumerate(decisions) for name, text in d.refinements().items()
            if scored_steps(text)]
    questions = [problems[i].question for i, _, _ in todo]
    steps = [scored_steps(text) for _, _, text in todo]
    values = {m: models[m].score(questions, steps) if todo else [] for m in EVAL_SCORERS if m in models}
    out: list[dict[str, dict]] = [{} for _ in decisions]
    for j, (i, name, text) in enumerate(todo):
        out[i][name] = {"text": text, **_grade(problems[i], text), **{m: v[j] for m, v in values.items()}}
    return out


def evaluate_batch(models: dict[str, RemoteModel], problems: Sequence[Problem], cfg: GloreConfig,
                   metrics: StageMetrics) -> list[dict]:
    """The records of a batch of test problems (see the module docstring). Each model output is
    computed once: the ensemble runs once (where = SORM), and the rows that differ only in where
    the local refiner starts (the ORM's first low step, the exact first wrong step) reuse its
    draft, global refinement and scores."""
    ev, max_tokens = cfg.eval, cfg.sampling.max_tokens
    prompts = [solve_prompt(p.question) for p in problems]
    questions = [p.question for p in problems]
    greedy = models["policy"].generate(prompts, Sampling(n=1, temperature=0.0, max_tokens=max_tokens))
    sampled = models["policy"].generate(prompts, Sampling(n=ev.k, temperature=ev.temperature, top_p=cfg.sampling.top_p,
                                                       max_tokens=max_tokens, seed=cfg.sampling.seed))
    drafts = [g.completions[0].text for g in greedy]
    texts = [[d] + [c.text for c in g.completions] for d, g in zip(drafts, sampled, strict=True)]
    metrics.record("samples", sum(len(ts) for ts in texts))
    metrics.record("generated_tokens", sum(c.n_tokens for g in (*greedy, *sampled) for c in g.completions))
    flat_q = [q for q, ts in zip(questions, texts) for _ in ts]
    flat_steps = [scored_steps(t) for ts in texts for t in ts]
    values = {m: iter(models[m].score(flat_q, flat_steps)) for m in EVAL_SCORERS if m in models}
    scored = []
    for problem, solutions in zip(problems, texts, strict=True):
        scored.append([{"text": text, **_grade(problem, text), **{m: next(v) for m, v in values.items()}}
                       for text in solutions])

    settings = EnsembleSettings(orm_threshold=ev.orm_threshold, always_refine=ev.always_refine,
                                step_threshold=ev.step_threshold, where="sorm", max_tokens=max_tokens,
                                global_offset=ev.global_offset, local_offset=ev.local_offset,
                                refine_samples=ev.refine_samples, sample_temperature=ev.temperature)
    ranked_by = ranker(models)
    ensemble = RefinementEnsemble.of(models | {"orm": models[ranked_by]}, settings)
    decisions = ensemble.solve(questions, drafts)
    # The same refinement with the local refiner started elsewhere: at the ORM's first low step, and
    # at the exact first wrong step (model organism). Only refined drafts are rewritten.
    orm_where = [first_bad_step(s[0]["orm"], d.draft, ev.orm_step_threshold) if d.refined else None
                 for s, d in zip(scored, decisions, strict=True)]
    oracle_where = [_oracle_bad_step(d.draft, s[0]["first_wrong"]) if d.refined else None
                    for s, d in zip(scored, decisions, strict=True)]
    local_orm = ensemble.refine_locally(questions, drafts, orm_where)
    local_oracle = ensemble.refine_locally(questions, drafts, oracle_where)

    candidates = score_candidates(models, problems, decisions)
    rounds = iterate(ensemble, questions, decisions, ev.max_rounds, ev.temperature, cfg.sampling.seed)
    metrics.record("questions", len(problems))
    for decision in decisions:
        metrics.record("chosen_candidates", candidate=decision.chosen)
    records = []
    for i, (problem, solutions, decision) in enumerate(zip(problems, scored, decisions, strict=True)):
        def right(text: str | None, draft_ok: bool = solutions[0]["correct"]) -> bool:
            return draft_ok if text is None else is_correct(text, problem.gold)  # no candidate: the draft stands

        organism = is_organism_problem(problem)
        samples = solutions[1:]
        with_greedy = solutions[:ev.k]  # the greedy draft and k - 1 samples
        correct = {"draft": solutions[0]["correct"],
                   "best_of_k": samples[_orm_best([s[ranked_by] for s in samples])]["correct"],
                   "best_of_k_with_greedy": with_greedy[_orm_best([s[ranked_by] for s in with_greedy])]["correct"],
                   "global": right(decision.global_), "local": right(decision.local),
                   "any_refinement": any(right(text) for text in decision.refinements().values()),
                   "local_orm": right(local_orm[i]),
                   "local_oracle_where": right(local_oracle[i]) if organism else None,
                   "chosen": right(decision.candidate(decision.chosen)),
                   "rounds": [right(texts[i]) for texts in rounds]}
        records.append({"id": problem.id, "question": problem.question, "answer": problem.answer,
                        "step_truth": organism, "solutions": solutions, "correct": correct,
                        "decision": decision.to_row(), "candidates": candidates[i], "local_orm": local_orm[i], "orm_first_bad_step": orm_where[i],
                        "local_oracle_where": local_oracle[i], "oracle_first_bad_step": oracle_where[i]})
    return records


def run_evaluation(cfg: GloreConfig, test: str, models: dict[str, str], stage_dir: str, report_dir: str) -> dict:
    """Evaluate on the first `eval.n_problems` test problems; writes `stage_dir/decisions.jsonl` and
    the report (report.json, report.md, plots) under `report_dir`. Returns counts for the manifest."""
    from glore_ray.core.report import build_report, write_report

    t0 = time.perf_counter()
    metrics = StageMetrics("evaluate", cfg.run_name)
    quarantine = Quarantine()
    # eval.n_problems of them: few enough to hold, and the progress line counts against their number.
    all_problems = list(itertools.islice(load_problems(test, quarantine=quarantine), cfg.eval.n_problems))
    problems, n_questions = iter(all_problems), len(all_problems)
    with ThreadPoolExecutor(cfg.eval.pool.replicas) as threads:  # the replica sets load in parallel
        replicas = list(threads.map(lambda _: start_model_servers(cfg, models), range(cfg.eval.pool.replicas)))
    log.info(f"evaluate: {len(models) * len(replicas)} models up in {time.perf_counter() - t0:.0f} s")
    batches = iter(lambda: list(itertools.islice(problems, cfg.eval.pool.batch_size)), [])
    records: list[dict] = []
    decisions = Path(stage_dir) / "decisions.jsonl"
    try:
        with decisions.open("w") as sink, ThreadPoolExecutor(len(replicas)) as threads:
            # One batch in flight per replica set; results are written in input order.
            while window := [threads.submit(evaluate_batch, m, b, cfg, metrics) for m, b in zip(replicas, batches)]:
                for future in window:
                    for record in future.result():
                        sink.write(json.dumps(record) + "\n")
                        records.append(record)
                log.info(f"  evaluate: {len(records)} of {n_questions} questions, {time.perf_counter() - t0:.0f} s")
    finally:
        for model_set in replicas:
            stop_model_servers(model_set)
    if quarantine:
        raise ValueError(f"{test}: {quarantine.summary()} in a file the data stage wrote")
    settings = {f: getattr(cfg.eval, f) for f in ("always_refine", "orm_threshold", "step_threshold",
                                                  "orm_step_threshold", "global_offset", "local_offset",
                                                  "refine_samples", "max_rounds")}
    settings["ranked_by"] = ranker(models)
    report = build_report(records, cfg.eval.k, settings, cfg.run_name, cfg.eval.split)
    files = write_report(report, report_dir)
    log.info(f"evaluate: report -> {', '.join(str(f) for f in files)}")
    return {"questions": len(records)}
