"""The process's runtime set-up for a `glore` verb: joining the Ray cluster (or starting a local
one) and where glore's own log lines go. `capacity.py` (what the cluster can hold) sits beside it."""

from __future__ import annotations

import logging
import os
import sys


def connect_ray(verbose: bool) -> None:
    """Join the cluster in RAY_ADDRESS, else start a local one. A person's terminal (and `ray job
    logs`) shows glore's lines: the workers' logs (vLLM warm-up, Ray Train, NUMA and Triton
    warnings) stay in Ray's log directory unless `verbose`."""
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


def show_glore_logs() -> None:
    """glore's INFO lines on stdout, once per process."""
    logger = logging.getLogger("glore_ray")
    if not any(isinstance(h, _Stdout) for h in logger.handlers):
        handler = _Stdout()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
