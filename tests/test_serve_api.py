"""The Serve app's HTTP contract without a cluster: per-request settings within the server's
limits, the bearer token's sources and check."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from glore_ray.config import EnsembleSettings, ServeConfig
from glore_ray.serve.api import RequestError, SolveRequest, authorized, ensemble_settings, load_token


def test_request_settings_override_the_server_defaults() -> None:
    served = EnsembleSettings(always_refine=False, orm_threshold=0.4, global_offset=-1.5, local_offset=0.25,
                              max_tokens=64)
    plain = ensemble_settings(SolveRequest(question="Ava has 3 apples."), served, ServeConfig())
    assert (plain.always_refine, plain.orm_threshold, plain.where, plain.max_tokens) == (False, 0.4, "sorm", 64)
    assert (plain.global_offset, plain.local_offset) == (-1.5, 0.25)  # the run's calibration, not a request's
    request = SolveRequest.model_validate({"question": "q", "settings": {"always_refine": True, "where": "orm",
                                                                        "max_tokens": 16}})
    s = ensemble_settings(request, served, ServeConfig())
    assert (s.always_refine, s.orm_threshold, s.where, s.max_tokens) == (True, 0.4, "orm", 16)
    rounds = SolveRequest.model_validate({"question": "q", "settings": {"max_rounds": 3}})
    assert ensemble_settings(rounds, served, ServeConfig()) == served  # rounds are the ingress's, not the ensemble's


@pytest.mark.parametrize("body, message", [
    ({"question": "x" * 2001}, "question: 2001 characters; the limit is 2000"),
    ({"question": "q", "draft": "y" * 8001}, "draft: 8001 characters; the limit is 8000"),
    ({"question": "q", "settings": {"max_tokens": 65}}, "settings.max_tokens: 65 exceeds the server's 64"),
    ({"question": "q", "settings": {"max_rounds": 4}}, "settings.max_rounds: 4 exceeds the server's 3"),
])
def test_server_limits_are_request_errors(body, message) -> None:
    with pytest.raises(RequestError, match=message):
        ensemble_settings(SolveRequest.model_validate(body), EnsembleSettings(max_tokens=64), ServeConfig())


@pytest.mark.parametrize("body", [
    {}, {"question": ""}, {"question": "   "}, {"question": 3}, {"question": "q", "model_path": "/etc/passwd"},
    {"question": "q", "settings": {"orm_threshold": 2}}, {"question": "q", "settings": {"where": "prm"}},
    {"question": "q", "settings": {"max_tokens": 0}},
])
def test_the_schema_rejects_malformed_requests(body) -> None:
    with pytest.raises(ValidationError):
        SolveRequest.model_validate(body)


def test_the_token_comes_from_the_file_else_the_environment(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("GLORE_SERVE_TOKEN", raising=False)
    assert load_token(ServeConfig()) is None
    monkeypatch.setenv("GLORE_SERVE_TOKEN", "from-env")
    assert load_token(ServeConfig()) == "from-env"
    (tmp_path / "token").write_text("from-file\n")
    assert load_token(ServeConfig(token_file=str(tmp_path / "token"))) == "from-file"
    with pytest.raises(FileNotFoundError, match="serve.token_file: .*missing does not exist"):
        load_token(ServeConfig(token_file=str(tmp_path / "missing")))
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ValueError, match="serve.token_file: .*empty is empty"):
        load_token(ServeConfig(token_file=str(tmp_path / "empty")))


@pytest.mark.parametrize("header, ok", [
    ("Bearer s3cret", True), ("bearer s3cret", True), ("Bearer s3cre", False), ("Basic s3cret", False),
    ("s3cret", False), (None, False), ("", False),
])
def test_the_bearer_check(header, ok) -> None:
    assert authorized(header, "s3cret") is ok
    assert authorized(header, None) is True  # no token configured: open


def test_glore_serve_names_the_missing_model_folders_before_touching_ray(tmp_path, capsys) -> None:
    from glore_ray.cli import main

    assert main(["serve", "--models", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"no exported model folder for policy: {tmp_path}/policy/model" in err
    assert "run `glore pipeline` with this config first" in err


def test_glore_serve_reads_the_config_the_run_directory_was_made_with(tmp_path, capsys) -> None:
    """`glore serve --models RUN` without --config serves the models that run's config placed (here:
    an expert-iteration round, so the policy is that round's, and no likelihood reranker: both
    differ from the defaults)."""
    import dataclasses
    import json

    from glore_ray.cli import main
    from glore_ray.config import load_config

    cfg = load_config(None, ["expert_iteration.rounds=1", "reranker.likelihood=false"])
    (tmp_path / "config.json").write_text(json.dumps(dataclasses.asdict(cfg)))  # as `glore pipeline` writes it
    assert main(["serve", "--models", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"policy: {tmp_path}/expert_iteration_1/model" in err and "reranker" not in err


def test_each_ingress_app_checks_its_own_token() -> None:
    """Two ingress replicas in one process (two apps, or a test beside a server) each answer to
    their own bearer token: the FastAPI app is built per replica, with no module-global state."""
    from fastapi.responses import JSONResponse
    from fastapi.testclient import TestClient

    from glore_ray.serve.api import SolveResponse
    from glore_ray.serve.ingress import build_api

    class Ingress:
        async def healthz(self) -> JSONResponse:
            return JSONResponse({"status": "ok"})

        async def decide(self, request) -> SolveResponse:
            raise AssertionError("not reached without the token")

    first, second = TestClient(build_api(Ingress(), "first")), TestClient(build_api(Ingress(), "second"))
    body = {"question": "Ava has 3 apples."}
    assert first.post("/v1/solve", json=body, headers={"Authorization": "Bearer second"}).status_code == 401
    assert second.post("/v1/solve", json=body, headers={"Authorization": "Bearer first"}).status_code == 401
    with pytest.raises(AssertionError, match="not reached"):
        second.post("/v1/solve", json=body, headers={"Authorization": "Bearer second"})
    assert first.get("/healthz").json() == {"status": "ok"}  # no token needed to ask
    assert TestClient(build_api(Ingress(), None)).post("/v1/solve", json={}).status_code == 422  # no token set
