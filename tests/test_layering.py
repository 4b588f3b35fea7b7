"""The package's dependencies point one way, read from every import statement (those inside functions
too): the core is pure, models and training know nothing of the pipeline or Serve, and Serve reads a
run directory's layout without importing pipeline code."""

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
def test_the_core_imports_only_the_core_and_io(module) -> None:
    for name in imports(module):
        if name.startswith("glore_ray"):
            assert _within(name, ("glore_ray.core", "glore_ray.io")), f"{module} imports {name}"
        assert not _within(name, ENGINES), f"{module} imports {name}"


@pytest.mark.parametrize("module", [*modules("models"), *modules("training")])
def test_models_and_training_import_no_pipeline_serve_or_ray_orchestration(module) -> None:
    for name in imports(module):
        assert not _within(name, ("glore_ray.pipeline", "glore_ray.serve", "glore_ray.cli")), f"{module} imports {name}"
        if module.startswith("glore_ray.models"):
            assert not _within(name, ("ray",)), f"{module} imports {name}"


@pytest.mark.parametrize("module", modules("serve"))
def test_serve_imports_no_pipeline_code(module) -> None:
    assert not any(_within(name, ("glore_ray.pipeline",)) for name in imports(module)), module


def test_the_config_imports_only_the_core() -> None:
    project = {name for name in imports("glore_ray.config") if name.startswith("glore_ray")}
    assert project and all(_within(name, ("glore_ray.core",)) for name in project), project


def test_the_checker_sees_imports_inside_functions() -> None:
    """The rules above hold for lazy imports too (a lazy import of the pipeline is still a dependency)."""
    assert "glore_ray.pipeline.data_stage" in imports("glore_ray.pipeline.policy_eval")
    assert any(_within(name, ("ray",)) for name in imports("glore_ray.training.ray_train"))
