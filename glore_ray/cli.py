"""`glore`: the command line. Every verb takes `--config <yaml>` (the embedded tiny-cpu defaults
when omitted) and repeatable `--set section.key=value` overrides of the same typed config."""

from __future__ import annotations

import argparse
import sys

from glore_ray.config import ConfigError, load_config
from glore_ray.objectives import OBJECTIVES


def _config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML config (default: the embedded tiny-cpu settings)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set engine.backend=hf (repeatable)")


def _verb(verbs, name: str, help: str, **io_help: str) -> argparse.ArgumentParser:
    """A sub-command with the config options and required `--data/--model/--out` paths, in that order."""
    parser = verbs.add_parser(name, help=help)
    _config_args(parser)
    for option, text in io_help.items():
        parser.add_argument(f"--{option}", required=True, help=text)
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="glore", description=__doc__)
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="<verb>")

    p = _verb(verbs, "organism", "generate model-organism problems to a JSONL file",
              out="output JSONL (local path or s3://, gs:// URI)")
    p.add_argument("--split", choices=["train", "validation", "test"], required=True)
    _verb(verbs, "build-model", "train a tokenizer on a data file and save an untrained tiny Llama",
          data="problems to train the tokenizer on", out="Hugging Face model folder to write")
    _verb(verbs, "sft", "fine-tune a model on gold solutions (single process)",
          data="training problems (GSM8K/SVAMP/our JSONL)", model="Hugging Face model folder to start from",
          out="Hugging Face model folder to write")
    p = _verb(verbs, "train", "train an objective on Ray Train (DDP or DeepSpeed ZeRO)",
              data="training rows: Parquet file/directory or JSONL, local or s3/gs",
              model="Hugging Face folder to start from (the policy for every objective)",
              out="Hugging Face folder to write")
    p.add_argument("objective", choices=OBJECTIVES)
    _verb(verbs, "rollouts", "K graded, de-duplicated policy samples per question (Ray Data + engine pool)",
          data="questions (GSM8K/SVAMP/our JSONL, local or s3/gs)", model="policy (Hugging Face folder)",
          out="stage directory: data/, manifest.json, quarantine.jsonl")
    p = _verb(verbs, "label", "ORM or SORM step labels (TRL PRM layout) from a rollouts directory",
              data="rollouts stage directory", out="stage directory: data/, manifest.json")
    p.add_argument("kind", choices=["orm", "sorm", "prm"])
    p.add_argument("--model", help="policy that samples continuations (SORM only)")
    p.add_argument("--mode", choices=["efficient", "exhaustive"], help="SORM labelling mode (default: labels.mode)")
    p = _verb(verbs, "pairs", "global and local refinement pairs from rollouts and SORM labels",
              data="rollouts stage directory", sorm="SORM label stage directory", out="stage directory")
    _verb(verbs, "sample", "sample and grade solutions for a data file with a model",
          data="problems (GSM8K/SVAMP/our JSONL)", model="Hugging Face model folder",
          out="directory for samples.jsonl and summary.json")
    p = _verb(verbs, "pipeline", "every GLoRe stage on a Ray cluster, from data to the evaluation report; "
              "finished stages are skipped, an interrupted one resumes",
              out="run directory: one sub-directory per stage, report.json, report.md, plots")
    p.add_argument("--from", dest="from_stage", metavar="STAGE", help="re-run this stage and every later one")
    p.add_argument("--only", action="append", metavar="STAGE",
                   help="run just this stage (repeatable; `expert_iteration` means every round); "
                        "earlier stages must be done")
    _config_args(verbs.add_parser("config", help="print the effective configuration (defaults <- --config <- --set) "
                                                 "as YAML, each field with its documentation"))
    _verb(verbs, "serve", "the refinement ensemble over HTTP (Ray Serve) until interrupted; serve.* in the "
          "config sets host, port, token, replicas and batching",
          models="pipeline run directory (--out of `glore pipeline` with the same config)")
    return parser


def _connect_ray() -> None:
    import os

    import ray

    # Ray Data's progress bars redraw thousands of lines into `ray job logs` and piped output; the
    # stages print their own progress lines.
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    if not ray.is_initialized():
        ray.init()  # the cluster in RAY_ADDRESS, else a local one


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as e:
        print(f"glore: config error: {e}", file=sys.stderr)
        return 2
    if args.verb == "config":
        from glore_ray.config import describe_config

        print(describe_config(cfg))
        return 0
    from glore_ray import single_process  # after parsing: `glore --help` stays instant

    if args.verb == "organism":
        cfg.data.source = "organism"
        single_process.write_split(cfg, args.split, args.out)
    elif args.verb == "build-model":
        single_process.build_tiny_policy(cfg, args.data, args.out)
    elif args.verb == "sft":
        single_process.train_policy_local(cfg, args.data, args.model, args.out)
    elif args.verb == "train":
        from glore_ray.metrics import StageMetrics
        from glore_ray.trainer import fit

        _connect_ray()
        fit(args.objective, cfg.training(args.objective), args.data, args.model, args.out,
            f"{cfg.run_name}-{args.objective}", single_process.echo, StageMetrics(args.objective, cfg.run_name))
    elif args.verb in ("rollouts", "label", "pairs"):
        from glore_ray import stages

        _connect_ray()
        if args.verb == "rollouts":
            stages.run_rollouts(cfg, args.data, args.model, args.out, single_process.echo)
        elif args.verb == "label":
            if args.mode:
                cfg.labels.mode = args.mode
            stages.run_labels(cfg, args.kind, args.data, args.model, args.out, single_process.echo)
        else:
            stages.run_pairs(args.data, args.sorm, args.out, single_process.echo)
    elif args.verb == "sample":
        single_process.evaluate_policy(cfg, args.data, args.model, args.out)
    elif args.verb == "pipeline":
        from glore_ray.pipeline import run_pipeline

        _connect_ray()
        try:
            run_pipeline(cfg, args.out, args.from_stage, single_process.echo, args.only)
        except ValueError as e:
            print(f"glore: {e}", file=sys.stderr)
            return 2
    elif args.verb == "serve":
        from glore_ray.pipeline import ensemble_models
        from glore_ray.serve_app import build_app, run_server

        try:
            app = build_app(cfg, ensemble_models(cfg, args.models))
        except FileNotFoundError as e:
            print(f"glore: {e}", file=sys.stderr)
            return 2
        _connect_ray()
        run_server(app, cfg.serve, single_process.echo)
    return 0


def job_main(*verb: str) -> None:
    """The body of a `jobs/` script: runs `glore <verb>` with the script's arguments; the verb joins
    the cluster the job was submitted to with a plain `ray.init()` (a job must not pass resources:
    the cluster has them), after checking its inputs."""
    sys.exit(main([*verb, *sys.argv[1:]]))


if __name__ == "__main__":
    sys.exit(main())
