"""What every section shares: the error that names a key, the checks that raise it, and the
metadata that marks a field as execution (where and how fast, never what)."""

from __future__ import annotations


class ConfigError(ValueError):
    """A config value or key is invalid; the message names the dotted key."""


EXECUTION = {"execution": True}
"""Field metadata: where and how fast a stage runs (resources, replicas, logging, checkpoints,
storage), never what it computes. A stage's hash leaves these fields out
(`result_config`), so scaling a run or moving it re-runs nothing."""


def check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {message}")


def check_resources(resources: dict[str, float], key: str) -> None:
    """Custom Ray resources (a node type's marker) are positive amounts."""
    for name, amount in resources.items():
        check(amount > 0, f"{key}.{name}", "must be > 0")
