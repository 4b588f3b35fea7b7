"""The typed config: YAML + dotted overrides, and errors that name the key."""

from __future__ import annotations

import re
from dataclasses import replace

import pytest

from glore_ray.cli import main
from glore_ray.config import ConfigError, GloreConfig, load_config, parse_override
from tests.conftest import REPO

TINY = REPO / "cluster" / "configs" / "tiny-cpu.yaml"


def _without_line(lines: list[str], i: int) -> list[str]:
    """The YAML without line i, and without the section headers that leaves empty."""
    lines = lines[:i] + lines[i + 1:]
    while empty := [j for j, line in enumerate(lines) if re.match(r"^(\s*)\w+:\s*(#.*)?$", line)
                    and _indent(next((n for n in lines[j + 1:] if n.split("#")[0].strip()), "")) <= _indent(line)]:
        del lines[empty[0]]
    return lines


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


@pytest.mark.parametrize("path", sorted((REPO / "cluster" / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_lists_only_what_differs_from_the_defaults(path, tmp_path) -> None:
    """Each value line changes the loaded config: a line that restates a default would hide which
    settings a run chose (`glore config` lists them all, documented)."""
    lines = path.read_text().splitlines(keepends=True)
    full = load_config(path)
    for i, line in enumerate(lines):
        body = line.split("#")[0]
        if not re.match(r"^\s*\w+:\s*\S", body) or any(c in body for c in "&*<"):
            continue  # a header, a comment, or YAML anchors and merges
        trial = tmp_path / path.name
        trial.write_text("".join(_without_line(lines, i)))
        try:
            assert load_config(trial) != full, f"{path.name}:{i + 1} restates the default: {line.strip()}"
        except ConfigError:
            pass  # the line is needed: the config is invalid without it


def test_the_embedded_default_is_the_tiny_cpu_config() -> None:
    assert load_config(TINY) == GloreConfig() == load_config(None)


def test_dotted_overrides_are_typed_by_the_schema() -> None:
    cfg = load_config(TINY, ["engine.backend=hf", "policy.lr=1e-3", "eval.k=4", "policy.steps=3",
                             "policy.warmup_steps=0", "data.organism.max_steps=6"])
    assert (cfg.engine.backend, cfg.policy.lr, cfg.eval.k, cfg.data.organism.max_steps) == ("hf", 1e-3, 4, 6)
    assert isinstance(cfg.policy.lr, float)
    assert load_config(None, ["policy.lr=1"]).policy.lr == 1.0  # an int where a float is expected is fine


@pytest.mark.parametrize("override, message", [
    ("engine.temprature=0.7", "engine.temprature: unknown key"),
    ("eval.temperature=hot", "eval.temperature: expected float, got str 'hot'"),
    ("engine.max_model_len=1024", "engine.max_model_len: 1024 exceeds model.max_position_embeddings 512"),
    ("policy.steps=true", "policy.steps: expected int, got bool"),
    ("engine.backend=tpu", "engine.backend: 'tpu' is not one of 'auto', 'vllm', 'hf'"),
    ("model.num_heads=3", "model.num_heads: must divide hidden_size"),
    ("model.num_heads=8", "model.num_heads: head dim 16 is not supported by vLLM"),
    ("data.organism.max_steps=7", "data.organism.min_steps/max_steps"),
    ("data=3", "data: expected a mapping"),
    ("rollouts.pool.resources=3", "rollouts.pool.resources: expected a mapping, got int 3"),
    ("rollouts.pool.resources={engine_node: -1}", "rollouts.pool.resources.engine_node: must be > 0"),
    ("rollouts.pool.resources={engine_node: many}", "rollouts.pool.resources.engine_node: expected float"),
    ("eval.k.x=1", "eval.k: expected int, got dict"),
    ("data.source=files", "data.train_path: source 'files' needs both"),
    ("labels.round_size=9", "labels.round_size: must be in \\[1, k\\]"),
    ("rollouts.pool.cpus_per_replica=0", "rollouts.pool.cpus_per_replica: must be > 0"),
    ("labels.mode=greedy", "labels.mode: 'greedy' is not one of 'efficient', 'exhaustive'"),
    ("expert_iteration.steps=0", "expert_iteration.steps: must be >= 1"),
    # A round's own schedule, not the policy's 30 warm-up steps in a 3-step round.
    ("expert_iteration.steps=3", "expert_iteration.warmup_steps: must be in \\[0, steps\\)"),
    ("ensemble.step_threshold=2", "ensemble.step_threshold: must be in \\[0, 1\\]"),
    ("ensemble.orm_step_threshold=-0.1", "ensemble.orm_step_threshold: must be in \\[0, 1\\]"),
    ("pairs.identity_share=1.5", "pairs.identity_share: must be in \\[0, 1\\]"),
    ("ensemble.global_offset=.nan", "ensemble.global_offset: must be a finite number"),
    ("ensemble.local_offset=.inf", "ensemble.local_offset: must be a finite number"),
    ("eval.pool.cpus_per_replica=0", "eval.pool.cpus_per_replica: must be > 0"),
    ("eval.split=dev", "eval.split: 'dev' is not one of 'test', 'validation'"),
    ("policy.torch_threads=-1", "policy.torch_threads: must be >= 0"),
    ("orm.accelerator_type=A100-80G", "orm.accelerator_type: needs gpus_per_worker > 0"),
    ("rollouts.pool.accelerator_type=L4", "rollouts.pool.accelerator_type: needs gpus_per_replica > 0"),
    ("serve.policy.accelerator_type=L4", "serve.policy.accelerator_type: needs gpus > 0"),
])
def test_bad_values_name_the_key(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        load_config(TINY, [override])


def test_the_validation_split_is_evaluated_while_settings_are_chosen() -> None:
    from glore_ray.pipeline.registry import build_stages

    stages = {s.name: s for s in build_stages(load_config(None, ["eval.split=validation"]), "/run")}
    assert stages["evaluate"].inputs["test"] == "/run/data/validation.jsonl"
    with pytest.raises(ConfigError, match="eval.split: validation needs data.validation_path"):
        load_config(None, ["eval.split=validation", "data.source=files", "data.train_path=a.jsonl",
                           "data.test_path=b.jsonl"])


def test_unknown_key_in_yaml_names_file_and_key(tmp_path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("policy:\n  stpes: 10\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: policy.stpes: unknown key \(valid keys here: .*steps"):
        load_config(path)


def test_override_syntax() -> None:
    assert parse_override("sampling.n=8") == ("sampling.n", 8)
    assert parse_override("run_name=exp 1") == ("run_name", "exp 1")
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        parse_override("sampling.n")


def test_cli_reports_config_errors_without_a_traceback(capsys) -> None:
    assert main(["organism", "--split", "train", "--out", "x.jsonl", "--set", "data.organism.seed=x"]) == 2
    assert "config error: config: data.organism.seed: expected int, got str 'x'" in capsys.readouterr().err


def test_train_batch_size_must_be_positive() -> None:
    with pytest.raises(ConfigError, match="policy.batch_size: must be > 0"):
        load_config(None, ["policy.batch_size=0"])


def test_an_engine_replica_needs_a_gpu_per_tensor_parallel_shard() -> None:
    sharded = ["engine.tensor_parallel_size=2", "rollouts.pool.gpus_per_replica=2"]
    assert load_config(TINY, sharded).rollouts.pool.gpus_per_replica == 2
    with pytest.raises(ConfigError, match="labels.pool.gpus_per_replica: 1.0 GPUs cannot hold an engine"):
        load_config(TINY, sharded + ["labels.pool.gpus_per_replica=1"])


def test_a_partial_section_keeps_that_sections_own_defaults() -> None:
    """The reward models' and refiners' sections default to fine-tuning settings, and the
    evaluation's pool to 0.25 CPUs: naming one key must not reset the others to the class's."""
    cfg = load_config(None, ["orm.steps=40", "eval.pool.batch_size=4", "serve.ingress.max_batch_size=4"])
    default = load_config(None)
    assert replace(cfg.orm, steps=default.orm.steps) == default.orm and cfg.orm.steps == 40
    assert replace(cfg.eval.pool, batch_size=default.eval.pool.batch_size) == default.eval.pool
    assert cfg.serve.ingress.batch_wait_timeout_s == default.serve.ingress.batch_wait_timeout_s


def test_glore_config_prints_the_effective_config_documented_and_loadable(tmp_path, capsys) -> None:
    overrides = ["eval.k=4", "data.organism.max_steps=5", "reranker.likelihood=false", "run_name=run:1"]
    assert main(["config", "--config", str(TINY), *[a for o in overrides for a in ("--set", o)]]) == 0
    printed = capsys.readouterr().out
    assert "\n    # Problems in the training split.\n    n_train: 20000\n" in printed  # data.organism.n_train
    assert "# The whole job." not in printed and "\neval:\n" in printed and "  k: 4\n" in printed
    assert "# What ranks a question's candidates" in printed  # a section's class documentation
    # It reads back as the same configuration.
    (tmp_path / "effective.yaml").write_text(printed)
    assert load_config(tmp_path / "effective.yaml") == load_config(TINY, overrides)


def test_a_pool_asks_for_a_node_types_custom_resource_from_the_command_line() -> None:
    cfg = load_config(None, ["rollouts.pool.resources={engine_node: 1}", "labels.pool.resources.cpu_node=0.5"])
    assert cfg.rollouts.pool.resources == {"engine_node": 1.0} and cfg.labels.pool.resources == {"cpu_node": 0.5}


def test_a_name_marked_execution_is_execution_wherever_it_appears() -> None:
    """A stage's hash leaves out fields by name (`result_config`, also over the config dicts old
    manifests stored), so a name marked EXECUTION anywhere must be EXECUTION everywhere it can be
    hashed: outside an EXECUTION section, every field of that name carries the mark itself."""
    import dataclasses

    from glore_ray.config import EXECUTION_KEYS, GloreConfig

    def unmarked(section, path: str):
        for f in dataclasses.fields(section):
            if f.metadata.get("execution"):
                continue  # all below is left out of the hash with it
            value = getattr(section, f.name)
            if f.name in EXECUTION_KEYS:
                yield f"{path}{f.name}"
            if dataclasses.is_dataclass(value):
                yield from unmarked(value, f"{path}{f.name}.")

    assert EXECUTION_KEYS >= {"pool", "num_workers", "log_every", "storage_path", "resources"}
    assert list(unmarked(GloreConfig(), "")) == []
