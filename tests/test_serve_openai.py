"""The OpenAI-compatible routes with the real `openai` client, over the app's ASGI transport and a
scripted ingress (the decision is fixed; what the routes make of it is tested). test_serve.py
points the same client at the miniature app over loopback HTTP."""

from __future__ import annotations

import json

import openai
import pytest
from fastapi.testclient import TestClient

from glore_ray.config import EnsembleSettings, ServeConfig
from glore_ray.core.ensemble import Decision
from glore_ray.core.generation import Completion, Generation, Usage
from glore_ray.serve.api import ensemble_settings
from glore_ray.serve.ingress import build_api

TOKEN = "s3cret"
QUESTION = "Ava has 3 boxes of 4 apples. She eats 2. How many are left?"
LOCAL = "3 * 4 = 12 apples.\n12 - 2 = 10 apples.\nThe answer is 10"


class ScriptedIngress:
    """Decides every question alike (the local refinement wins) and records the settings each
    request ran with, after the server's limits (`ensemble_settings`) as the real ingress applies them."""

    def __init__(self):
        self.settings: list[EnsembleSettings] = []

    def _settings(self, request) -> EnsembleSettings:
        settings = ensemble_settings(request, EnsembleSettings(max_tokens=64), ServeConfig())
        self.settings.append(settings)
        return settings

    async def decide(self, request) -> list[Decision]:
        """Round 1 chooses the local refinement; a second round (`max_rounds`) refines it again."""
        self._settings(request)
        first = Decision(request.question, "3 * 4 = 12 apples.\n12 - 3 = 9 apples.\nThe answer is 9", True,
                        global_="3 * 4 = 12 apples.\nThe answer is 12", local=LOCAL, first_bad_step=1,
                        step_values=[0.9, 0.1, 0.2], orm_scores={"draft": 0.1, "global": 0.3, "local": 0.8},
                        chosen="local", answer="10", finish_reasons={"draft": "stop", "global": "stop",
                                                                     "local": "length"},
                        usage=Usage(prompt_tokens=120, completion_tokens=45))
        again = Decision(request.question, LOCAL, True, global_=LOCAL + ".", orm_scores={"draft": 0.4, "global": 0.9},
                         chosen="global", answer="10", finish_reasons={"global": "stop"},
                         usage=Usage(prompt_tokens=50, completion_tokens=20))
        return [first, again][:request.settings.max_rounds or 1]

    async def draft(self, request) -> Generation:
        self._settings(request)
        return Generation("prompt", 20, [Completion("The answer is 9", 6, "stop")])

    async def healthz(self):
        raise AssertionError("not asked")


@pytest.fixture
def served():
    ingress = ScriptedIngress()
    http = TestClient(build_api(ingress, TOKEN))
    return openai.OpenAI(base_url="http://testserver/v1", api_key=TOKEN, http_client=http, max_retries=0), ingress, http


def test_models_lists_the_ensemble_and_the_policy_alone(served) -> None:
    client, _, _ = served
    assert [m.id for m in client.models.list()] == ["glore", "glore-policy"]


def test_chat_answers_with_the_chosen_solution_its_usage_and_the_decision(served) -> None:
    client, ingress, _ = served
    response = client.chat.completions.create(
        model="glore", messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": QUESTION}],
        extra_body={"always_refine": True, "orm_threshold": 0.3, "where": "orm"}, max_tokens=32)
    (choice,) = response.choices
    assert choice.message.role == "assistant" and choice.message.content == LOCAL
    assert choice.finish_reason == "length"  # the chosen candidate's own
    assert (response.usage.prompt_tokens, response.usage.completion_tokens, response.usage.total_tokens) == (120, 45, 165)
    decision = response.model_extra["glore"]
    assert decision["chosen"] == "local" and decision["orm_scores"]["local"] == 0.8 and decision["global"]
    (settings,) = ingress.settings
    assert (settings.always_refine, settings.orm_threshold, settings.where, settings.max_tokens) == (True, 0.3, "orm", 32)
    # A second round refines round 1's answer: the answer is the last round's, the usage both rounds'.
    twice = client.chat.completions.create(model="glore", messages=[{"role": "user", "content": QUESTION}],
                                           extra_body={"max_rounds": 2})
    assert twice.choices[0].message.content == LOCAL + "." and twice.choices[0].finish_reason == "stop"
    assert twice.usage.total_tokens == 165 + 70 and twice.model_extra["glore"]["rounds"] == [LOCAL, LOCAL + "."]
    # Text parts are text too.
    parts = client.chat.completions.create(model="glore", messages=[
        {"role": "user", "content": [{"type": "text", "text": "Ava has 3 boxes"}, {"type": "text", "text": "."}]}])
    assert parts.choices[0].message.content == LOCAL


def test_the_policy_model_answers_with_the_greedy_draft_alone(served) -> None:
    client, _, _ = served
    response = client.chat.completions.create(model="glore-policy", messages=[{"role": "user", "content": QUESTION}])
    assert response.choices[0].message.content == "The answer is 9" and response.usage.total_tokens == 26
    assert "glore" not in (response.model_extra or {})


def test_completions_answer_each_prompt_as_a_question(served) -> None:
    client, ingress, _ = served
    response = client.completions.create(model="glore", prompt=[QUESTION, "Ben has 5 cards. He finds 3."])
    assert [c.index for c in response.choices] == [0, 1] and all(c.text == LOCAL for c in response.choices)
    assert response.usage.prompt_tokens == 240 and len(response.model_extra["glore"]) == 2
    # OpenAI's max_tokens default (16) is not a request for 16 tokens: the server's applies.
    assert [s.max_tokens for s in ingress.settings] == [64, 64]


def test_stream_sends_the_decided_answer_in_chunks(served) -> None:
    client, _, _ = served
    chunks = list(client.chat.completions.create(model="glore", messages=[{"role": "user", "content": QUESTION}],
                                                 stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == LOCAL and len([c for c in chunks if c.choices and c.choices[0].delta.content]) == 3
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.total_tokens == 165
    completion = "".join(c.choices[0].text for c in client.completions.create(model="glore", prompt=QUESTION,
                                                                              stream=True))
    assert completion == LOCAL


@pytest.mark.parametrize("kwargs, error, param", [
    ({"extra_body": {"orm_threshold": 2}}, openai.UnprocessableEntityError, "orm_threshold"),
    ({"extra_body": {"orm_treshold": 0.3}}, openai.UnprocessableEntityError, "orm_treshold"),
    ({"max_tokens": 65}, openai.UnprocessableEntityError, "max_tokens"),
    ({"extra_body": {"max_rounds": 4}}, openai.UnprocessableEntityError, "max_rounds"),
    ({"extra_body": {"max_rounds": 0}}, openai.UnprocessableEntityError, "max_rounds"),
    ({"temperature": 0.7}, openai.BadRequestError, "temperature"),
    ({"n": 2}, openai.BadRequestError, "n"),
    ({"model": "gpt-4o"}, openai.NotFoundError, "model"),
    ({"messages": [{"role": "system", "content": "No question."}]}, openai.BadRequestError, "messages"),
    ({"messages": [{"role": "user", "content": "   "}]}, openai.UnprocessableEntityError, "messages"),
])
def test_what_the_ensemble_cannot_do_is_a_4xx_in_openais_error_shape(served, kwargs, error, param) -> None:
    client, ingress, _ = served
    request = {"model": "glore", "messages": [{"role": "user", "content": QUESTION}]} | kwargs
    with pytest.raises(error) as raised:
        client.chat.completions.create(**request)
    body = raised.value.body
    assert body["param"] == param and body["message"] and body["code"] == raised.value.status_code


def test_a_wrong_key_is_an_authentication_error_and_solve_keeps_its_own_shape(served) -> None:
    client, _, http = served
    with pytest.raises(openai.AuthenticationError):
        client.with_options(api_key="wrong").chat.completions.create(
            model="glore", messages=[{"role": "user", "content": QUESTION}])
    with pytest.raises(openai.AuthenticationError):
        client.with_options(api_key="wrong").models.list()
    # /v1/solve answers its errors as it did ({"detail": ...}), the OpenAI routes as OpenAI does.
    solve = http.post("/v1/solve", json={"question": ""}, headers={"Authorization": f"Bearer {TOKEN}"})
    assert solve.status_code == 422 and "question" in solve.json()["detail"]
    auth = {"Authorization": f"Bearer {TOKEN}"}
    for path, body, status in [("/v1/chat/completions", b"{not json", 422), ("/v1/chat/completions", b"\x00" * 9, 400),
                               ("/v1/completions", b"{}", 422), ("/v1/completions", b'{"prompt": [1, 2]}', 400),
                               ("/v1/completions", json.dumps({"model": "glore", "prompt": ["q"] * 33}).encode(), 400)]:
        answer = http.post(path, content=body, headers=auth | {"Content-Type": "application/json"})
        assert answer.status_code == status, (path, body, answer.text)
        assert set(answer.json()["error"]) == {"message", "type", "param", "code"}, (path, body, answer.text)
