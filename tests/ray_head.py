"""A real Ray head for the job tests: `ray start --head` on loopback with its own ports and temp
dir, the `ray job` CLI against its dashboard, and a scraper of its metrics endpoint."""

from __future__ import annotations

import json
import re
import threading
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from glore_ray.testing.local_cluster import free_port, ray_cli, stop_head

SERIES = re.compile(r'^(ray_glore_\w+)\{(.*)\} (\S+)$')
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


@dataclass(frozen=True)
class Head:
    address: str
    """The dashboard's HTTP address: what `ray job` takes."""
    metrics_url: str


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

