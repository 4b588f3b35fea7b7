"""A real Ray head for the job tests: `ray start --head` on loopback with its own ports and temp
dir, the `ray job` CLI against its dashboard, and a scraper of its metrics endpoint."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

RAY = str(Path(sys.executable).parent / "ray")
SERIES = re.compile(r'^(ray_glore_\w+)\{(.*)\} (\S+)$')
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class Head:
    address: str
    """The dashboard's HTTP address: what `ray job` takes."""
    metrics_url: str


def ray_cli(*args: str, timeout: float = 120) -> str:
    done = subprocess.run([RAY, *args], capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"ray {' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return done.stdout


@contextmanager
def ray_head(temp_dir: Path, num_cpus: int = 2) -> Iterator[Head]:
    """A head node whose processes report metrics every 0.5 s (Ray's default: 10 s; a miniature
    stage's batches may all finish within 2 s), stopped at the end (its own processes only)."""
    dashboard, metrics, gcs = free_port(), free_port(), free_port()
    ray_cli("start", "--head", "--node-ip-address=127.0.0.1", f"--port={gcs}",
            "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}", f"--metrics-export-port={metrics}",
            f"--ray-client-server-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}",
            f"--num-cpus={num_cpus}", f"--temp-dir={temp_dir}", "--disable-usage-stats",
            '--system-config={"metrics_report_interval_ms": 500}')
    try:
        yield Head(f"http://127.0.0.1:{dashboard}", f"http://127.0.0.1:{metrics}/metrics")
    finally:
        stop_head(temp_dir, gcs)


def stop_head(temp_dir: Path, gcs_port: int, timeout_s: float = 30) -> None:
    """Stop this head's processes and their children, and nothing else: `ray stop` stops every Ray
    instance on the machine, a pipeline the user runs beside the tests included. Its processes name
    its temp dir or its GCS port on their command line; workers are their children."""
    import os

    import psutil

    marks = (str(temp_dir), f":{gcs_port}")
    mine = {os.getpid(), *(p.pid for p in psutil.Process().parents())}
    procs: dict[int, psutil.Process] = {}
    for p in psutil.process_iter(["cmdline"]):
        try:
            if p.pid not in mine and any(m in arg for arg in p.info["cmdline"] or [] for m in marks):
                procs |= {q.pid: q for q in (p, *p.children(recursive=True))}
        except psutil.Error:  # exited meanwhile
            continue
    for p in procs.values():
        try:
            p.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(list(procs.values()), timeout=timeout_s)
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            pass


def parse_metrics(text: str) -> list[tuple[str, dict[str, str], float]]:
    """The project's series (`ray_glore_*`) in a Prometheus text page."""
    series = []
    for line in text.splitlines():
        if m := SERIES.match(line):
            series.append((m.group(1), dict(LABEL.findall(m.group(2))), float(m.group(3))))
    return series


@dataclass
class Scrape:
    running: list[str]
    """The pipeline's stages running when the page was read (from its pipeline.json)."""
    series: list[tuple[str, dict[str, str], float]]


@dataclass
class MetricsScraper:
    """Reads the metrics endpoint every `every` seconds on a thread while a pipeline runs."""

    url: str
    run_dir: Path
    every: float = 0.5
    scrapes: list[Scrape] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _running(self) -> list[str]:
        try:
            stages = json.loads((self.run_dir / "pipeline.json").read_text())["stages"]
        except (FileNotFoundError, json.JSONDecodeError):  # not yet written, or mid-write
            return []
        return [name for name, row in stages.items() if row["state"] in ("running", "resuming")]

    def _scrape(self) -> None:
        running = self._running()
        try:
            with urllib.request.urlopen(self.url, timeout=10) as page:
                text = page.read().decode()
        except OSError:  # the agent restarting or busy: the next scrape will do
            return
        self.scrapes.append(Scrape(running, parse_metrics(text)))

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            self._scrape()

    def __enter__(self) -> MetricsScraper:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

