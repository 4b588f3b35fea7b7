"""`glore`: the command line. Every verb takes `--config <yaml>` (the embedded tiny-cpu defaults
when omitted) and repeatable `--set section.key=value` overrides of the same typed config."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from glore_ray.config import ConfigError, load_config
from glore_ray.training.objectives import OBJECTIVES


def _config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML config (default: the embedded tiny-cpu settings; for `serve`, "
                                         "the config the run directory was made with)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set engine.backend=hf (repeatable)")
    parser.add_argument("--verbose", action="store_true",
                        help="also print the Ray workers' own logs here (engines, Ray Train, Serve replicas); "
                             "without it they stay in Ray's log directory, shown at the start")


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
              out="stage directory: model/ (a Hugging Face folder), manifest.json")
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


def _connect_ray(verbose: bool) -> None:
    """Join the cluster in RAY_ADDRESS, else start a local one. A person's terminal (and `ray job
    logs`) shows glore's lines: the workers' logs (vLLM warm-up, Ray Train, NUMA and Triton
    warnings) stay in Ray's log directory unless `verbose`."""
    import os

    import ray

    # Ray Data's progress bars redraw thousands of lines into `ray job logs` and piped output; the
    # stages print their own progress lines.
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    if not verbose:  # the driver's own library chatter: model-loading reports and bars
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if not ray.is_initialized():
        ray.init(log_to_driver=verbose)
        if not verbose:  # Ray has no public accessor of the session's log directory
            logs = ray._private.worker.global_worker.node.get_logs_dir_path()
            logging.getLogger("glore_ray").info(f"Ray workers' logs: {logs} (--verbose prints them here)")
    if not verbose:
        import ray.data  # configures its logger: a file in Ray's log directory and the console

        for handler in logging.getLogger("ray.data").handlers:
            if isinstance(handler, logging.StreamHandler):  # the file keeps every line
                handler.setLevel(logging.ERROR)


class _Stdout(logging.StreamHandler):
    """glore's lines on the current sys.stdout (which `ray job` log capture and tests swap), flushed
    per line so that progress shows live in `ray job logs` and piped output."""

    def __init__(self) -> None:
        super().__init__(sys.stdout)

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, value) -> None:
        pass


def _show_glore_logs() -> None:
    logger = logging.getLogger("glore_ray")
    if not any(isinstance(h, _Stdout) for h in logger.handlers):
        handler = _Stdout()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)


def _run_stage(stage, out: str, verbose: bool) -> None:
    from glore_ray.pipeline.runner import run_stage

    _connect_ray(verbose)
    run_stage(stage, Path(out).absolute())


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    config = args.config
    if args.verb == "serve" and config is None and Path(args.models, "config.json").is_file():
        config = str(Path(args.models, "config.json"))  # what `glore pipeline` wrote: the same model folders
    try:
        cfg = load_config(config, args.overrides)
    except ConfigError as e:
        print(f"glore: config error: {e}", file=sys.stderr)
        return 2
    if args.verb == "config":
        from glore_ray.config import describe_config

        print(describe_config(cfg))
        return 0
    _show_glore_logs()
    # Imported after parsing: `glore --help` stays instant.
    from glore_ray.pipeline import data_stage, registry

    if args.verb == "organism":
        cfg.data.source = "organism"
        data_stage.write_split(cfg, args.split, args.out)
    elif args.verb == "build-model":
        data_stage.build_tiny_policy(cfg, args.data, args.out)
    elif args.verb == "sft":
        from glore_ray.training.local import train_policy_local

        problems = data_stage.read_problems(cfg, args.data, f"{args.out}/quarantine.jsonl")
        train_policy_local(cfg.policy, problems, args.model, args.out)
    elif args.verb == "train":
        reward_model = cfg.reward_model if args.objective in ("orm", "sorm") else None
        _run_stage(registry.train_stage(args.objective, args.objective, cfg.training(args.objective), args.data,
                                        args.model, cfg.run_name, reward_model), args.out, args.verbose)
    elif args.verb == "rollouts":
        _run_stage(registry.rollouts_stage("rollouts", cfg, args.data, args.model), args.out, args.verbose)
    elif args.verb == "label":
        if args.mode:
            cfg.labels.mode = args.mode
        _run_stage(registry.labels_stage(cfg, args.kind, args.data, args.model), args.out, args.verbose)
    elif args.verb == "pairs":
        _run_stage(registry.pairs_stage(cfg, args.data, f"{args.sorm}/data"), args.out, args.verbose)
    elif args.verb == "sample":
        from glore_ray.pipeline.policy_eval import evaluate_policy

        evaluate_policy(cfg, args.data, args.model, args.out)
    elif args.verb == "pipeline":
        import ray

        from glore_ray.pipeline.runner import closing_lines, run_pipeline

        _connect_ray(args.verbose)
        try:
            report = run_pipeline(cfg, args.out, args.from_stage, args.only)
        except ValueError as e:
            print(f"glore: {e}", file=sys.stderr)
            return 2
        if report:  # the last lines on screen: Ray's teardown (and what it flushes) goes before them
            ray.shutdown()
            sys.stderr.flush()
            logging.getLogger("glore_ray").info(closing_lines(cfg, Path(args.out).absolute()))
    elif args.verb == "serve":
        from glore_ray.layout import model_dirs
        from glore_ray.serve.app import build_app, run_server

        try:
            app = build_app(cfg, model_dirs(cfg, args.models))
        except FileNotFoundError as e:
            print(f"glore: {e}", file=sys.stderr)
            return 2
        _connect_ray(args.verbose)
        run_server(app, cfg.serve)
    return 0


def job_main(*verb: str) -> None:
    """The body of a `jobs/` script: runs `glore <verb>` with the script's arguments; the verb joins
    the cluster the job was submitted to with a plain `ray.init()` (a job must not pass resources:
    the cluster has them), after checking its inputs."""
    sys.exit(main([*verb, *sys.argv[1:]]))


if __name__ == "__main__":
    sys.exit(main())
