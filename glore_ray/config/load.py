"""Defaults <- a YAML file <- dotted overrides (`--set engine.temperature=0.7`), coerced to the
annotated types: generic over dataclass sections, every error naming the offending key, so a typo
in a 200-line cluster config is a one-line fix."""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from glore_ray.config.fields import ConfigError
from glore_ray.config.glore import GloreConfig


def _coerce(value: Any, tp: Any, key: str, default: Any = None) -> Any:
    """Convert a YAML value to the annotated type, or fail naming the key. A section is built over
    its `default` (the parent's default for it), so unnamed keys keep that section's defaults."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping (section), got {type(value).__name__} {value!r}")
        return _build(tp, value, key, default)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(repr, choices))}")
        return value
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__} {value!r}")
        key_tp, value_tp = typing.get_args(tp)
        return {_coerce(k, key_tp, f"{key} (a key)"): _coerce(v, value_tp, f"{key}.{k}") for k, v in value.items()}
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__} {value!r}")
        (item_tp, *_) = typing.get_args(tp)
        return origin(_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value))
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        (inner,) = [o for o in options if o is not type(None)]
        return _coerce(value, inner, key)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # YAML 1.1 reads `1e-3` (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    # bool is an int in Python; a YAML `1` for a bool flag (or `true` for a count) is a mistake.
    if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
        raise ConfigError(f"{key}: expected {tp.__name__}, got {type(value).__name__} {value!r}")
    return value


def _build(cls: type, values: dict, prefix: str, base: Any = None) -> Any:
    """`values` over `base` (default: the class's defaults): the eval section's pool keeps its own
    defaults (0.25 CPUs) when a YAML or an override names only its batch size."""
    base = cls() if base is None else base
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for name, value in values.items():
        key = f"{prefix}.{name}" if prefix else str(name)
        if name not in names:
            raise ConfigError(f"{key}: unknown key (valid keys here: {', '.join(sorted(names))})")
        kwargs[name] = _coerce(value, hints[name], key, getattr(base, name))
    return dataclasses.replace(base, **kwargs)


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = tree
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{dotted}: '{part}' is a value, not a section")
    node[leaf] = value


def parse_override(text: str) -> tuple[str, Any]:
    """`engine.temperature=0.7` -> ("engine.temperature", 0.7); values are parsed as YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r}: expected KEY=VALUE, e.g. engine.temperature=0.7")
    return key.strip(), yaml.safe_load(raw) if raw.strip() else ""


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> GloreConfig:
    """Defaults <- YAML file <- dotted overrides, then validation."""
    tree: dict = {}
    if path is not None:
        try:
            tree = yaml.safe_load(Path(path).read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: invalid YAML: {e}") from e
        if not isinstance(tree, dict):
            raise ConfigError(f"{path}: top level must be a mapping of sections")
    for text in overrides:
        _set_dotted(tree, *parse_override(text))
    try:
        config = _build(GloreConfig, tree, "")
        config.validate()
    except ConfigError as e:
        raise ConfigError(f"{path or 'config'}: {e}") from None
    return config
