"""The package's dependencies point one way, read from every import statement (those inside functions
too): the config is a leaf, the core is pure, models know nothing of training, models and training
know nothing of the pipeline or Serve, and Serve reads a run directory's layout without importing
pipeline code. And the rules of the house: a stage's function receives its config sections and
nothing else of the config, only `config/` declares thresholds and model lists, no module grows past
300 lines."""

from __future__ import annotations

import ast

import pytest

from tests.conftest import REPO

PACKAGE = REPO / "glore_ray"
ENGINES = ("ray", "torch", "vllm", "transformers", "deepspeed")


def imports(module: str) -> set[str]:
    """Every module a package module imports (absolute names), at any depth of its code."""
    path = PACKAGE.joinpath(*module.split(".")[1:])
    tree = ast.parse((path / "__init__.py" if path.is_dir() else path.with_suffix(".py")).read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            if node.module == "glore_ray":
                found |= {f"glore_ray.{a.name}" for a in node.names}
    return found


def modules(package: str) -> list[str]:
    return [f"glore_ray.{package}.{p.stem}" for p in sorted((PACKAGE / package).glob("*.py")) if p.stem != "__init__"]


def _within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


@pytest.mark.parametrize("module", modules("core"))
def test_the_core_imports_only_the_core_io_and_config(module) -> None:
    for name in imports(module):
        if name.startswith("glore_ray"):
            assert _within(name, ("glore_ray.core", "glore_ray.io", "glore_ray.config")), f"{module} imports {name}"
        assert not _within(name, ENGINES), f"{module} imports {name}"


@pytest.mark.parametrize("module", [*modules("models"), *modules("training")])
def test_models_and_training_import_no_pipeline_serve_or_ray_orchestration(module) -> None:
    for name in imports(module):
        assert not _within(name, ("glore_ray.pipeline", "glore_ray.serve", "glore_ray.cli")), f"{module} imports {name}"
        if module.startswith("glore_ray.models"):
            assert not _within(name, ("ray", "glore_ray.training")), f"{module} imports {name}"


@pytest.mark.parametrize("module", modules("serve"))
def test_serve_imports_no_pipeline_code(module) -> None:
    assert not any(_within(name, ("glore_ray.pipeline",)) for name in imports(module)), module


@pytest.mark.parametrize("module", ["glore_ray.config", *modules("config")])
def test_the_config_imports_only_the_config(module) -> None:
    for name in imports(module):
        if name.startswith("glore_ray"):
            assert _within(name, ("glore_ray.config",)), f"{module} imports {name}"
        assert not _within(name, ENGINES), f"{module} imports {name}"


def test_nothing_in_the_package_imports_its_test_support() -> None:
    for path in PACKAGE.rglob("*.py"):
        module = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        if not module.startswith("glore_ray.testing"):
            assert not any(_within(n, ("glore_ray.testing", "tests", "bench")) for n in imports(module)), module


def test_the_checker_sees_imports_inside_functions() -> None:
    """The rules above hold for lazy imports too (a lazy import of the pipeline is still a dependency)."""
    assert "glore_ray.pipeline.data_stage" in imports("glore_ray.pipeline.policy_eval")
    assert any(_within(name, ("ray",)) for name in imports("glore_ray.training.ray_train"))


def test_every_stage_function_receives_exactly_its_hashed_sections() -> None:
    """A stage's `run` is a plain function whose parameters after the context are the names of its
    config sections: what the hash covers is all it can read (no closure over the whole config)."""
    import inspect

    from glore_ray.config import GloreConfig, load_config
    from glore_ray.pipeline.registry import build_stages

    cfg = load_config(None, ["expert_iteration.rounds=1", "labels.prm=true"])
    stages = build_stages(cfg, "/run")
    assert {"reranker", "prm_labels", "expert_iteration_1_rows", "evaluate"} <= {s.name for s in stages}
    for stage in stages:
        assert stage.run.__closure__ is None and stage.run.__name__ != "<lambda>", stage.name
        params = inspect.signature(stage.run).parameters
        assert list(params)[1:] == list(stage.sections), stage.name
        annotations = " ".join(str(p.annotation) for p in params.values())
        assert "GloreConfig" not in annotations, stage.name
        assert not any(isinstance(v, GloreConfig) for v in stage.sections.values()), stage.name


def _declarations(module: str) -> list[tuple[str, ast.AST]]:
    """(name, value) of every assignment and default in a module: module constants, class fields,
    keyword defaults."""
    path = PACKAGE.joinpath(*module.split(".")[1:])
    tree = ast.parse((path / "__init__.py" if path.is_dir() else path.with_suffix(".py")).read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign):
            found += [(t.id, node.value) for t in node.targets if isinstance(t, ast.Name)]
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
            found.append((node.target.id, node.value))
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            args = node.args
            positional = args.posonlyargs + args.args
            found += [(a.arg, d) for a, d in zip(positional[len(positional) - len(args.defaults):], args.defaults)]
            found += [(a.arg, d) for a, d in zip(args.kwonlyargs, args.kw_defaults) if d is not None]
    return found


def _package_modules() -> list[str]:
    return [".".join(p.relative_to(REPO).with_suffix("").parts) for p in sorted(PACKAGE.rglob("*.py"))
            if p.stem != "__init__"]


@pytest.mark.parametrize("module", [m for m in _package_modules() if not m.startswith("glore_ray.config.")])
def test_only_the_config_declares_a_threshold_or_a_model_list(module) -> None:
    from glore_ray.config.ensemble import EVAL_SCORERS, MODELS

    models = set(MODELS) | set(EVAL_SCORERS)
    for name, value in _declarations(module):
        if "threshold" in name.lower():
            assert not isinstance(value, ast.Constant) or value.value is None, f"{module}: {name} = {ast.unparse(value)}"
        if isinstance(value, (ast.Tuple, ast.List, ast.Set)):
            strings = {e.value for e in value.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)}
            assert len(strings & models) < 2, f"{module}: {name} lists models {sorted(strings & models)}"


@pytest.mark.parametrize("module", _package_modules())
def test_no_module_is_over_300_lines(module) -> None:
    path = REPO.joinpath(*module.split(".")).with_suffix(".py")
    assert len(path.read_text().splitlines()) <= 300, module
