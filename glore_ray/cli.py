"""`glore`: the command line. Every verb takes `--config <yaml>` (the embedded tiny-cpu defaults
when omitted) and repeatable `--set section.key=value` overrides of the same typed config."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from glore_ray.config import ConfigError, GloreConfig, load_config
from glore_ray.runtime import connect_ray, show_glore_logs
from glore_ray.training.objectives import OBJECTIVES


@dataclass(frozen=True)
class Verb:
    """A sub-command: a pipeline stage run in `--out` (manifest, skipping, resuming: the runner's),
    or a plain command."""

    help: str
    paths: dict[str, str] = field(default_factory=dict)
    """Required path options (`--data`, `--model`, `--out`, ...) and their help, in that order."""
    arguments: Callable[[argparse.ArgumentParser], None] | None = None
    """Further arguments of the verb."""
    overrides: Callable[[argparse.Namespace], list[str]] = lambda args: []
    """Options that are config values, as `--set` overrides: applied before validation."""
    stage: Callable[[argparse.Namespace, GloreConfig], object] | None = None
    """(args, config) -> the registry's Stage this verb runs."""
    command: Callable[[argparse.Namespace, GloreConfig], int | None] | None = None


def _train(args, cfg: GloreConfig):
    from glore_ray.pipeline.registry import train_stage

    reward_model = cfg.reward_model if args.objective in ("orm", "sorm") else None
    return train_stage(args.objective, args.objective, cfg.training(args.objective), args.data, args.model,
                       cfg.run_name, reward_model)


def _rollouts(args, cfg: GloreConfig):
    from glore_ray.pipeline.registry import rollouts_stage

    return rollouts_stage("rollouts", cfg, args.data, args.model)


def _label(args, cfg: GloreConfig):
    from glore_ray.pipeline.registry import labels_stage

    return labels_stage(cfg, args.kind, args.data, args.model)


def _pairs(args, cfg: GloreConfig):
    from glore_ray.layout import DATA, output
    from glore_ray.pipeline.registry import pairs_stage

    return pairs_stage(cfg, args.data, output(args.sorm, DATA))


def _organism(args, cfg: GloreConfig) -> None:
    from glore_ray.pipeline.data_stage import write_split

    write_split(cfg.data, args.split, args.out)


def _build_model(args, cfg: GloreConfig) -> None:
    from glore_ray.pipeline.data_stage import build_tiny_policy

    build_tiny_policy(cfg.model, cfg.policy.seed, args.data, args.out)


def _sft(args, cfg: GloreConfig) -> None:
    from glore_ray.pipeline.data_stage import read_problems
    from glore_ray.training.local import train_policy_local

    train_policy_local(cfg.policy, read_problems(args.data, f"{args.out}/quarantine.jsonl"), args.model, args.out)


def _sample(args, cfg: GloreConfig) -> None:
    from glore_ray.pipeline.policy_eval import evaluate_policy

    evaluate_policy(cfg, args.data, args.model, args.out)


def _pipeline(args, cfg: GloreConfig) -> int:
    import ray

    from glore_ray.pipeline.closing import closing_lines
    from glore_ray.pipeline.runner import run_pipeline

    connect_ray(args.verbose)
    try:
        report = run_pipeline(cfg, args.out, args.from_stage, args.only)
    except ValueError as e:
        print(f"glore: {e}", file=sys.stderr)
        return 2
    if report:  # the last lines on screen: Ray's teardown (and what it flushes) goes before them
        ray.shutdown()
        sys.stderr.flush()
        logging.getLogger("glore_ray").info(closing_lines(cfg, Path(args.out).absolute()))
    return 0


def _serve(args, cfg: GloreConfig) -> int:
    from glore_ray.layout import RunLayout
    from glore_ray.serve.app import build_app, run_server

    try:
        app = build_app(cfg, RunLayout(args.models).model_dirs(cfg))
    except FileNotFoundError as e:
        print(f"glore: {e}", file=sys.stderr)
        return 2
    connect_ray(args.verbose)
    run_server(app, cfg.serve)
    return 0


def _describe(args, cfg: GloreConfig) -> None:
    from glore_ray.config import describe_config

    print(describe_config(cfg))


def _pipeline_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--from", dest="from_stage", metavar="STAGE", help="re-run this stage and every later one")
    p.add_argument("--only", action="append", metavar="STAGE",
                   help="run just this stage (repeatable; `expert_iteration` means every round); "
                        "earlier stages must be done")


def _label_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("kind", choices=["orm", "sorm", "prm"])
    p.add_argument("--model", help="policy that samples continuations (SORM only)")
    p.add_argument("--mode", choices=["efficient", "exhaustive"], help="SORM labelling mode (default: labels.mode)")


VERBS = {
    "organism": Verb("generate model-organism problems to a JSONL file",
                     {"out": "output JSONL (local path or s3://, gs:// URI)"},
                     lambda p: p.add_argument("--split", choices=["train", "validation", "test"], required=True),
                     overrides=lambda args: ["data.source=organism"], command=_organism),
    "build-model": Verb("train a tokenizer on a data file and save an untrained tiny Llama",
                        {"data": "problems to train the tokenizer on", "out": "Hugging Face model folder to write"},
                        command=_build_model),
    "sft": Verb("fine-tune a model on gold solutions (single process)",
                {"data": "training problems (GSM8K/SVAMP/our JSONL)", "model": "Hugging Face model folder to start from",
                 "out": "Hugging Face model folder to write"}, command=_sft),
    "train": Verb("train an objective on Ray Train (DDP or DeepSpeed ZeRO)",
                  {"data": "training rows: Parquet file/directory or JSONL, local or s3/gs",
                   "model": "Hugging Face folder to start from (the policy for every objective)",
                   "out": "stage directory: model/ (a Hugging Face folder), manifest.json"},
                  lambda p: p.add_argument("objective", choices=OBJECTIVES), stage=_train),
    "rollouts": Verb("K graded, de-duplicated policy samples per question (Ray Data + engine pool)",
                     {"data": "questions (GSM8K/SVAMP/our JSONL, local or s3/gs)", "model": "policy (Hugging Face folder)",
                      "out": "stage directory: data/, manifest.json, quarantine.jsonl"}, stage=_rollouts),
    "label": Verb("ORM, SORM or PRM step labels (TRL PRM layout) from a rollouts directory",
                  {"data": "rollouts stage directory", "out": "stage directory: data/, manifest.json"},
                  _label_arguments, overrides=lambda args: [f"labels.mode={args.mode}"] if args.mode else [],
                  stage=_label),
    "pairs": Verb("global and local refinement pairs from rollouts and SORM labels",
                  {"data": "rollouts stage directory", "sorm": "SORM label stage directory", "out": "stage directory"},
                  stage=_pairs),
    "sample": Verb("sample and grade solutions for a data file with a model",
                   {"data": "problems (GSM8K/SVAMP/our JSONL)", "model": "Hugging Face model folder",
                    "out": "directory for samples.jsonl and summary.json"}, command=_sample),
    "pipeline": Verb("every GLoRe stage on a Ray cluster, from data to the evaluation report; finished stages are "
                     "skipped, an interrupted one resumes",
                     {"out": "run directory: one sub-directory per stage, report.json, report.md, plots"},
                     _pipeline_arguments, command=_pipeline),
    "config": Verb("print the effective configuration (defaults <- --config <- --set) as YAML, each field with "
                   "its documentation", command=_describe),
    "serve": Verb("the refinement ensemble over HTTP (Ray Serve) until interrupted; serve.* in the config sets "
                  "host, port, token, replicas and batching",
                  {"models": "pipeline run directory (--out of `glore pipeline` with the same config)"}, command=_serve),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="glore", description=__doc__)
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="<verb>")
    for name, verb in VERBS.items():
        p = verbs.add_parser(name, help=verb.help)
        p.add_argument("--config", help="YAML config (default: the embedded tiny-cpu settings; for `serve`, "
                                        "the config the run directory was made with)")
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config value, e.g. --set engine.backend=hf (repeatable)")
        p.add_argument("--verbose", action="store_true",
                       help="also print the Ray workers' own logs here (engines, Ray Train, Serve replicas); "
                            "without it they stay in Ray's log directory, shown at the start")
        for option, text in verb.paths.items():
            p.add_argument(f"--{option}", required=True, help=text)
        if verb.arguments:
            verb.arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    verb = VERBS[args.verb]
    config = args.config
    if args.verb == "serve" and config is None and Path(args.models, "config.json").is_file():
        config = str(Path(args.models, "config.json"))  # what `glore pipeline` wrote: the same model folders
    try:
        cfg = load_config(config, [*verb.overrides(args), *args.overrides])
    except ConfigError as e:
        print(f"glore: config error: {e}", file=sys.stderr)
        return 2
    if args.verb != "config":
        show_glore_logs()
    if verb.stage is None:
        return verb.command(args, cfg) or 0
    from glore_ray.pipeline.runner import run_stage

    stage = verb.stage(args, cfg)
    connect_ray(args.verbose)
    run_stage(stage, Path(args.out).absolute())
    return 0


def job_main(*verb: str) -> None:
    """The body of a `jobs/` script: runs `glore <verb>` with the script's arguments; the verb joins
    the cluster the job was submitted to with a plain `ray.init()` (a job must not pass resources:
    the cluster has them), after checking its inputs."""
    sys.exit(main([*verb, *sys.argv[1:]]))


if __name__ == "__main__":
    sys.exit(main())
