"""The Serve app on a local Ray cluster with the miniature pipeline's models, called over real HTTP
on loopback: answers and decisions match the offline ensemble, the `openai` client gets /v1/solve's
decision, bad requests get 4xx (fuzzed, on every route), /healthz and the OpenAPI schema, the bearer
token, and a killed model replica answers 503 then recovers."""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.error
import urllib.request
from dataclasses import replace

import openai
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from glore_ray.config import load_config
from glore_ray.testing.local_cluster import free_port
from tests.miniature import MINIATURE

# The first test's set-up runs the miniature pipeline (~4-5 min here) unless an earlier module did.
pytestmark = [pytest.mark.cluster, pytest.mark.timeout(900)]

TOKEN = "test-token-8f2c"


def http(method: str, url: str, body: bytes | dict | None = None, token: str | None = TOKEN) -> tuple[int, dict]:
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null") | {"_headers": dict(e.headers)}


@pytest.fixture(scope="module")
def served(miniature_run, ray_module, tmp_path_factory):
    from ray import serve

    from glore_ray.layout import RunLayout
    from glore_ray.serve.app import APP_NAME, build_app

    token_file = tmp_path_factory.mktemp("secret") / "token"
    token_file.write_text(TOKEN + "\n")
    port = free_port()
    # A short model timeout: a request that meets a dead replica answers 503 within seconds.
    cfg = load_config(None, MINIATURE + [f"serve.port={port}", f"serve.token_file={token_file}",
                                         "serve.model_timeout_s=3"])
    models = RunLayout(str(miniature_run)).model_dirs(cfg)
    serve.start(http_options={"host": cfg.serve.host, "port": port})
    try:
        serve.run(build_app(cfg, models), name=APP_NAME, route_prefix="/")
        yield f"http://127.0.0.1:{port}", cfg, models
    finally:
        serve.shutdown()


def _questions(miniature_run, n: int) -> list[str]:
    lines = (miniature_run / "data" / "test.jsonl").read_text().splitlines()[:n]
    return [json.loads(line)["question"] for line in lines]


def test_answers_and_decisions_match_the_offline_ensemble(served, miniature_run) -> None:
    from glore_ray.config import EngineConfig
    from glore_ray.core.ensemble import RefinementEnsemble
    from glore_ray.models.engines import HFEngine
    from glore_ray.models.scorers import load_scorer

    url, cfg, models = served
    questions = _questions(miniature_run, 4)
    engines = [HFEngine(models[m], EngineConfig(backend="hf")) for m in ("policy", "global_refiner", "local_refiner")]
    # The miniature run ranks with the likelihood reranker: the served ORM is the reranker.
    offline = RefinementEnsemble(*engines, load_scorer(models["reranker"]), load_scorer(models["sorm"]),
                                 replace(cfg.ensemble.with_max_tokens(cfg.sampling.max_tokens), always_refine=True))
    expected = offline.solve(questions)
    for question, want in zip(questions, expected, strict=True):
        status, got = http("POST", f"{url}/v1/solve", {"question": question, "settings": {"always_refine": True}})
        assert status == 200, got
        assert got["refined"] and got["draft"] == want.draft
        assert (got["global"], got["local"], got["first_bad_step"]) == (want.global_, want.local, want.first_bad_step)
        assert (got["chosen"], got["answer"]) == (want.chosen, want.answer)
        assert got["orm_scores"] == pytest.approx(want.orm_scores, abs=1e-4)
        assert got["step_values"] == pytest.approx(want.step_values, abs=1e-4)

    # A caller's own draft, refined only when the ORM scores it below a threshold of 1 (always).
    draft = "Step 1: 2 + 3 = 6\nThe answer is 6"
    by_threshold = replace(offline, settings=replace(offline.settings, always_refine=False, orm_threshold=1.0))
    (want,) = by_threshold.solve([questions[0]], [draft])
    status, got = http("POST", f"{url}/v1/solve", {"question": questions[0], "draft": draft,
                                                  "settings": {"orm_threshold": 1.0}})
    assert status == 200 and got["draft"] == draft and got["refined"] is want.refined
    assert (got["chosen"], got["answer"], got["local"]) == (want.chosen, want.answer, want.local)


def test_the_openai_client_gets_the_decision_solve_makes(served, miniature_run) -> None:
    """The real `openai` client over loopback: the chat answer is the candidate /v1/solve chooses for
    the same question and settings, with its decision and token usage; `glore-policy` answers with
    the draft; a wrong key and a malformed body are the client's own exceptions."""
    url, _, _ = served
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=TOKEN, max_retries=0, timeout=120)
    assert [m.id for m in client.models.list()] == ["glore", "glore-policy"]
    for question in _questions(miniature_run, 2):
        status, solved = http("POST", f"{url}/v1/solve", {"question": question, "settings": {"always_refine": True}})
        assert status == 200, solved
        chat = client.chat.completions.create(model="glore", messages=[{"role": "user", "content": question}],
                                              extra_body={"always_refine": True})
        decision = chat.model_extra["glore"]
        assert (decision["chosen"], decision["draft"], decision["global"], decision["local"]) == (
            solved["chosen"], solved["draft"], solved["global"], solved["local"])
        assert decision["orm_scores"] == pytest.approx(solved["orm_scores"], abs=1e-4)
        chosen = solved["samples"].get(solved["chosen"]) or solved[solved["chosen"]]
        assert chat.choices[0].message.content == chosen and chat.choices[0].finish_reason in ("stop", "length")
        assert chat.usage.prompt_tokens == solved["usage"]["prompt_tokens"] > 0
        assert chat.usage.completion_tokens == solved["usage"]["completion_tokens"] > 0
        policy = client.completions.create(model="glore-policy", prompt=question)
        assert policy.choices[0].text == solved["draft"]
    # Rounds: round 1 is the decision above; a second refines its answer while the ORM scores it low.
    twice = client.chat.completions.create(model="glore", messages=[{"role": "user", "content": question}],
                                           extra_body={"always_refine": True, "max_rounds": 2, "orm_threshold": 1.0})
    rounds = twice.model_extra["glore"]["rounds"]
    assert len(rounds) == 2 and rounds[0] == chosen and twice.choices[0].message.content == rounds[1]
    assert twice.usage.completion_tokens > chat.usage.completion_tokens
    with pytest.raises(openai.AuthenticationError):
        client.with_options(api_key="wrong").chat.completions.create(
            model="glore", messages=[{"role": "user", "content": "Ann has 3 apples."}])
    with pytest.raises(openai.UnprocessableEntityError):
        client.chat.completions.create(model="glore", messages=[{"role": "user", "content": "q"}],
                                       extra_body={"orm_threshold": "high"})
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="glore", messages=[{"role": "user", "content": "q"}], temperature=0.7)


@pytest.mark.parametrize("body", [
    b"{not json", b"[1, 2]", {}, {"question": ""}, {"question": "   "}, {"question": 3},
    {"question": "x" * 2001}, {"question": "q", "model_path": "/etc/passwd"},
    {"question": "q", "settings": {"max_tokens": 49}}, {"question": "q", "settings": {"orm_threshold": "high"}},
    {"question": "q", "settings": {"max_rounds": 4}},
])
def test_bad_requests_get_a_4xx_with_a_message(served, body) -> None:
    url, _, _ = served
    status, got = http("POST", f"{url}/v1/solve", body)
    assert status == 422, got
    assert got["detail"]


# Hostile bodies: any JSON value, numbers at their edges, text with every kind of code point (lone
# surrogates arrive as JSON escapes), nesting, and the request's own fields holding any of these.
_TEXT = st.text(st.one_of(st.characters(), st.integers(0xD800, 0xDFFF).map(chr)), max_size=24)
_NUMBERS = st.one_of(st.integers(), st.floats(), st.sampled_from([0, -0.0, 1, 2**63, -2**63 - 1, 2**64, 10**400,
                                                                   1e308, 5e-324]))
_JSON = st.recursive(st.none() | st.booleans() | _NUMBERS | _TEXT,
                     lambda kids: st.lists(kids, max_size=3) | st.dictionaries(_TEXT, kids, max_size=3), max_leaves=8)
_SETTINGS = st.fixed_dictionaries({}, optional={
    "always_refine": _JSON, "orm_threshold": _NUMBERS | _JSON, "step_threshold": _NUMBERS | _JSON,
    "where": st.sampled_from(["sorm", "orm", "SORM", ""]) | _JSON, "max_tokens": _NUMBERS | _JSON,
    "max_rounds": st.integers(0, 4) | _JSON})
_BODIES = st.one_of(
    _JSON.map(lambda v: json.dumps(v).encode()),
    st.tuples(st.fixed_dictionaries({}, optional={"question": _TEXT | _JSON, "draft": _TEXT | _JSON,
                                                  "settings": _SETTINGS | _JSON}),
              st.dictionaries(_TEXT, _JSON, max_size=2)).map(lambda t: json.dumps(t[1] | t[0]).encode()),
    # A real question: the ensemble runs, with hostile settings and drafts.
    st.fixed_dictionaries({"question": st.just("Ann has 3 apples. Ann finds 4 apples. How many apples does Ann have?")},
                          optional={"draft": _TEXT, "settings": _SETTINGS}).map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=32))


@settings(max_examples=80, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=_BODIES)
def test_no_request_body_gets_a_5xx(served, body: bytes) -> None:
    """Whatever a body holds, the answer is a decision or a 4xx that says what is wrong, never a
    5xx (which tells a client to retry what will never succeed) and never a hang."""
    url, _, _ = served
    status, got = http("POST", f"{url}/v1/solve", body)
    assert status < 500, (body, got)
    if status == 200:
        assert "answer" in got and got["draft"]
    else:
        assert status in (400, 422) and isinstance(got["detail"], str) and got["detail"], (body, got)


_OPENAI_MESSAGES = st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "assistant"]) | _JSON},
                                                   optional={"content": _TEXT | _JSON}) | _JSON, max_size=3)
_OPENAI_BODIES = st.one_of(
    _JSON.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=32),
    st.tuples(st.sampled_from(["/v1/chat/completions", "/v1/completions"]),
              st.fixed_dictionaries({}, optional={
                  "model": st.sampled_from(["glore", "glore-policy"]) | _TEXT | _JSON, "messages": _OPENAI_MESSAGES,
                  "prompt": _TEXT | _JSON, "stream": _JSON, "max_tokens": _NUMBERS | _JSON, "n": _NUMBERS | _JSON,
                  "temperature": _NUMBERS | _JSON, "stream_options": _JSON}),
              _SETTINGS, st.dictionaries(_TEXT, _JSON, max_size=2)).map(
        lambda t: (t[0], json.dumps(t[3] | t[2] | t[1]).encode())),
    # A real question: the ensemble runs, with hostile settings.
    st.tuples(st.sampled_from(["glore", "glore-policy"]), _SETTINGS, st.booleans()).map(lambda t: (
        "/v1/chat/completions", json.dumps({"model": t[0], "stream": t[2], "messages": [
            {"role": "user", "content": "Ann has 3 apples. Ann finds 4 apples. How many apples does Ann have?"}]}
            | t[1]).encode())))


@settings(max_examples=60, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=_OPENAI_BODIES)
def test_no_openai_request_body_gets_a_5xx(served, body) -> None:
    """The OpenAI routes hold /v1/solve's promise: an answer, or a 4xx in OpenAI's error shape."""
    url, _, _ = served
    path, body = body if isinstance(body, tuple) else ("/v1/chat/completions", body)
    request = urllib.request.Request(f"{url}{path}", data=body, method="POST", headers={
        "Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            status, text = response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        status, text = e.code, e.read().decode()
    assert status < 500, (path, body, text)
    if status == 200:
        assert text.startswith("data: ") and text.endswith("data: [DONE]\n\n") or json.loads(text)["choices"]
    else:
        error = json.loads(text)["error"]
        assert status in (400, 404, 422) and error["message"] and error["code"] == status, (path, body, text)


@pytest.mark.parametrize("body, field", [
    (b'{"question": "\\ud800 apples"}', "question"),
    (b'{"question": "q", "draft": "Step 1 \\udfff"}', "draft"),
    (b'{"question": "q", "draft": "  \\n "}', "draft"),
    (b'{"question": "q", "settings": {"orm_threshold": NaN}}', "settings.orm_threshold"),
    (b'{"question": "q", "settings": {"max_tokens": 1e999}}', "settings.max_tokens"),
    (b'{"question": "q", "\\udc80": 1}', "body: Input should be a valid string, unable to parse raw data as a unicode"),
    (b"[" * 50000 + b"]" * 50000, "body"),
])
def test_a_malformed_body_is_a_422_naming_the_field(served, body, field) -> None:
    url, _, _ = served
    status, got = http("POST", f"{url}/v1/solve", body)
    assert status in (400, 422) and field in got["detail"], got


def test_the_token_is_required_when_configured(served) -> None:
    url, _, _ = served
    for token in (None, "wrong"):
        status, got = http("POST", f"{url}/v1/solve", {"question": "q"}, token=token)
        assert status == 401 and "bearer token" in got["detail"]
        assert got["_headers"]["www-authenticate"] == "Bearer"
    # Checked before the body: an unauthenticated caller learns nothing from validation errors.
    assert http("POST", f"{url}/v1/solve", {}, token=None)[0] == 401


def test_healthz_and_the_openapi_schema(served) -> None:
    url, _, _ = served
    status, got = http("GET", f"{url}/healthz", token=None)
    assert status == 200 and got == {"status": "ok", "models": {m: "ok" for m in
                                                                  ("policy", "global_refiner", "local_refiner",
                                                                   "orm", "sorm")}}
    status, schema = http("GET", f"{url}/openapi.json", token=None)
    assert status == 200
    solve = schema["paths"]["/v1/solve"]["post"]
    assert {"401", "422", "503"} <= set(solve["responses"])
    request = schema["components"]["schemas"]["SolveRequest"]
    assert request["required"] == ["question"] and request["additionalProperties"] is False
    assert "global" in schema["components"]["schemas"]["SolveResponse"]["properties"]


def test_a_killed_model_replica_answers_503_then_recovers(served, miniature_run) -> None:
    import psutil

    url, _, _ = served
    question = _questions(miniature_run, 1)[0]
    status, before = http("POST", f"{url}/v1/solve", {"question": question})
    assert status == 200
    # Ray titles a replica's process `ray::ServeReplica:<app>:<deployment>`.
    replicas = [p for p in psutil.process_iter(["cmdline"])
                if "ServeReplica:glore:policy" in " ".join(p.info["cmdline"] or [])]
    assert replicas, "no policy replica process"
    for process in replicas:
        os.kill(process.pid, signal.SIGKILL)

    status, got = http("POST", f"{url}/v1/solve", {"question": question})
    assert status == 503 and got["model"] == "policy" and "the policy model is unavailable" in got["detail"]
    assert got["_headers"]["retry-after"] == "1"
    deadline = time.time() + 150
    while status != 200 and time.time() < deadline:
        time.sleep(2)
        status, got = http("POST", f"{url}/v1/solve", {"question": question})
        assert status in (200, 503), got
    assert status == 200 and got == before  # Serve replaced the replica; the same answer again
    assert http("GET", f"{url}/healthz", token=None)[0] == 200


def test_the_ingress_records_requests_latency_and_the_chosen_candidate(served) -> None:
    """Runs after the tests above: their 200s (/v1/solve and the OpenAI routes), the killed replica's
    503 and the settings 422 are on the node's metrics endpoint, tagged stage=serve and the run."""
    import ray

    from tests.ray_head import parse_metrics

    _, cfg, _ = served
    endpoint = f"http://127.0.0.1:{ray._private.worker.global_worker.node.metrics_export_port}/metrics"
    deadline, totals = time.time() + 60, {}
    while time.time() < deadline:  # Ray exports a process's metrics every 10 s by default
        with urllib.request.urlopen(endpoint, timeout=10) as page:
            series = [(n, tags, v) for n, tags, v in parse_metrics(page.read().decode())
                      if tags.get("stage") == "serve" and tags.get("run") == cfg.run_name]
        totals = {}
        for name, tags, value in series:
            key = name + "".join(f":{tags[k]}" for k in ("status", "candidate") if k in tags)
            totals[key] = totals.get(key, 0) + value
        if totals.get("ray_glore_serve_requests_total:200", 0) >= 7 and totals.get(
                "ray_glore_serve_requests_total:503", 0) >= 1:
            break
        time.sleep(2)
    assert totals.get("ray_glore_serve_requests_total:200", 0) >= 7, totals
    assert totals.get("ray_glore_serve_requests_total:422", 0) >= 1, totals  # max_tokens above the server's
    assert totals.get("ray_glore_serve_requests_total:503", 0) >= 1, totals
    chosen = sum(v for k, v in totals.items() if k.startswith("ray_glore_chosen_candidates_total:"))
    by_ensemble = sum(v for n, tags, v in series if n == "ray_glore_serve_requests_total"
                      and tags.get("status") == "200" and tags.get("model") == "glore")
    # Every answer of the ensemble chose a candidate; glore-policy's (the OpenAI test) are the draft alone.
    assert chosen == by_ensemble < totals["ray_glore_serve_requests_total:200"]
    assert totals.get("ray_glore_serve_latency_seconds_count", 0) == sum(
        v for k, v in totals.items() if k.startswith("ray_glore_serve_requests_total:"))
