"""The OpenAI-compatible routes of the Serve app, beside /v1/solve, so that the clients people already
point at vLLM or Ray Serve LLM (the `openai` package, LangChain, curl scripts) talk to the ensemble:

    GET  /v1/models             `glore` (the ensemble) and `glore-policy` (the greedy draft alone)
    POST /v1/chat/completions   the last user message is the question
    POST /v1/completions        the prompt (or each of a list of prompts) is a question

The answer is the chosen solution; `usage` sums the tokens of every generation the ensemble made
for it; the decision (draft, refinements, scores, the chosen candidate) rides in the `glore`
extension field, which OpenAI clients ignore. The ensemble's settings are extra body fields
(`extra_body={"always_refine": true}` in the `openai` client), validated as /v1/solve's. A request
field the ensemble cannot honour (sampling settings, tools, n > 1, log-probs) is a 400 naming it,
not silently ignored. `stream: true` sends the decided answer as chunks.

The schemas are Ray Serve LLM's protocol models (vLLM's), not a copy.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError
from ray.serve.llm.openai_api_models import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatCompletionStreamResponse,
    CompletionRequest,
    CompletionResponse,
    CompletionStreamResponse,
)
from vllm.entrypoints.generate.base.protocol import DeltaMessage
from vllm.entrypoints.openai.chat_completion.protocol import (
    ChatCompletionResponseChoice,
    ChatCompletionResponseStreamChoice,
    ChatMessage,
)
from vllm.entrypoints.openai.completion.protocol import CompletionResponseChoice, CompletionResponseStreamChoice
from vllm.entrypoints.serve.engine.protocol import ModelCard, ModelList, UsageInfo
from vllm.exceptions import VLLMValidationError

from glore_ray.serve.api import RequestError, SolveRequest, SolveResponse, SolveSettings

ENSEMBLE_MODEL, POLICY_MODEL = "glore", "glore-policy"
OPENAI_PATHS = ("/v1/models", "/v1/chat/completions", "/v1/completions")
MAX_PROMPTS = 32
"""Questions one /v1/completions request may carry (each is a whole ensemble run)."""
_ERROR_TYPES = {400: "BadRequestError", 401: "AuthenticationError", 404: "NotFoundError",
                422: "UnprocessableEntityError", 503: "ServiceUnavailableError"}
_SETTINGS = tuple(f for f in SolveSettings.model_fields if f != "max_tokens")
"""The ensemble's settings a request may carry as extra body fields (max_tokens is OpenAI's own)."""
_HONOURED = {"model", "messages", "prompt", "max_tokens", "max_completion_tokens", "stream", "stream_options", "user",
             "request_id", "n"}
"""Request fields read (`n` only as 1, `user` and `request_id` only passed by); any other set to a
value other than its default is refused."""


def openai_error(status: int, message: str, param: str | None = None) -> dict:
    return {"error": {"message": message, "type": _ERROR_TYPES.get(status, "Error"), "param": param, "code": status}}


def _refused(body: ChatCompletionRequest | CompletionRequest, sent: set[str]) -> RequestError | None:
    """The first field the ensemble cannot honour, as a 400 naming it."""
    fields = type(body).model_fields
    for name in sorted(sent & set(fields) - (_HONOURED - {"n"})):
        if getattr(body, name) != fields[name].get_default(call_default_factory=True):
            return RequestError(f"{name}: not supported by the GLoRe ensemble (it decodes its draft greedily and "
                                "its refiners as the server's `ensemble:` section says); leave it unset", 400, name)
    if body.n != 1:
        return RequestError("n: the ensemble answers with one solution per question; n must be 1", 400, "n")
    return None


def _solve_request(question: str, body: ChatCompletionRequest | CompletionRequest, sent: set[str],
                   field: str) -> SolveRequest:
    """The /v1/solve request a question and an OpenAI body make, validated as /v1/solve's: a
    problem is a 422 naming the body's field. `sent`: the fields the client set (vLLM's validators
    fill in some defaults, such as completions' max_tokens 16, that are no request of the client's)."""
    if refused := _refused(body, sent):
        raise refused
    if body.model not in (ENSEMBLE_MODEL, POLICY_MODEL):
        raise RequestError(f"model: `{body.model}` does not exist; this server has {ENSEMBLE_MODEL} and "
                           f"{POLICY_MODEL}", 404, "model")
    settings = dict(body.model_extra or {})
    for name in ("max_tokens", "max_completion_tokens"):
        if name in sent and getattr(body, name) is not None:
            settings["max_tokens"] = getattr(body, name)
    try:
        return SolveRequest(question=question, settings=SolveSettings.model_validate(settings))
    except ValidationError as e:
        raise RequestValidationError([error | {"loc": ("body", field if error["loc"] == ("question",) else
                                                      ".".join(str(p) for p in error["loc"]))}
                                      for error in e.errors(include_url=False, include_input=False)]) from None


def _chat_question(body: ChatCompletionRequest) -> str:
    """The last user message's text (its text parts joined); earlier messages are not read."""
    users = [m for m in body.messages if isinstance(m, dict) and m.get("role") == "user"]
    if not users:
        raise RequestError("messages: no user message; the last one is the question", 400, "messages")
    content = users[-1].get("content")
    if isinstance(content, str):
        return content
    parts = list(content) if isinstance(content, Iterable) else []
    if not parts or any(not isinstance(p, dict) or p.get("type") != "text" for p in parts):
        raise RequestError("messages: the last user message must be text (a string or text parts)", 400, "messages")
    return "".join(str(p.get("text", "")) for p in parts)


def _prompts(body: CompletionRequest) -> list[str]:
    prompt = body.prompt
    prompts = [prompt] if isinstance(prompt, str) else prompt if isinstance(prompt, list) else []
    if not prompts or not all(isinstance(p, str) for p in prompts):
        raise RequestError("prompt: a question, or a list of questions, as text (not token ids)", 400, "prompt")
    if len(prompts) > MAX_PROMPTS:
        raise RequestError(f"prompt: {len(prompts)} questions; at most {MAX_PROMPTS} per request", 400, "prompt")
    return prompts


@dataclass
class _Answer:
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    decision: dict | None
    """What /v1/solve answers (the `glore` extension field); None for `glore-policy`."""


async def _answer(ingress, request: SolveRequest, model: str) -> _Answer:
    if model == POLICY_MODEL:
        g = await ingress.draft(request)
        c = g.completions[0]
        return _Answer(c.text, c.finish_reason, g.prompt_tokens, c.n_tokens, None)
    decided = await ingress.decide(request)
    last, response = decided[-1], SolveResponse.from_rounds(decided)
    return _Answer(last.candidate(last.chosen), last.finish_reasons.get(last.chosen, "stop"),
                   response.usage["prompt_tokens"], response.usage["completion_tokens"],
                   response.model_dump(by_alias=True))


def _usage(answers: list[_Answer]) -> UsageInfo:
    prompt, completion = sum(a.prompt_tokens for a in answers), sum(a.completion_tokens for a in answers)
    return UsageInfo(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


def _events(chunks: Iterable) -> StreamingResponse:
    """Server-sent events, as OpenAI streams them: each chunk, then `[DONE]`."""
    async def lines() -> AsyncIterator[str]:
        for chunk in chunks:
            yield f"data: {json.dumps(chunk.model_dump(mode='json', exclude_none=True))}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(lines(), media_type="text/event-stream")


def _pieces(text: str) -> list[str]:
    """The answer in chunks: a line (a step) each."""
    return text.splitlines(keepends=True) or [text]


async def _invalid_body(request: Request, exc: VLLMValidationError) -> JSONResponse:
    """A body vLLM's own validators refuse (they raise past pydantic): a 422 naming the field."""
    return JSONResponse(openai_error(422, str(exc), exc.parameter), status_code=422)


def add_openai_routes(api: FastAPI, ingress, require_token) -> None:
    """The three routes on `api`, each behind `require_token` (a FastAPI `Depends`)."""
    api.add_exception_handler(VLLMValidationError, _invalid_body)
    errors = {401: {"description": "missing or wrong bearer token"}, 400: {"description": "a field not supported"},
              404: {"description": "no such model"}, 422: {"description": "invalid request"},
              503: {"description": "a model failed or did not answer in time"}}

    @api.get("/v1/models", response_model=ModelList, dependencies=[require_token])
    async def models() -> ModelList:
        return ModelList(data=[ModelCard(id=ENSEMBLE_MODEL, owned_by="glore-ray"),
                               ModelCard(id=POLICY_MODEL, owned_by="glore-ray", parent=ENSEMBLE_MODEL)])

    @api.post("/v1/chat/completions", response_model=ChatCompletionResponse, dependencies=[require_token],
              responses=errors)
    async def chat(body: ChatCompletionRequest, raw: Request):
        request = _solve_request(_chat_question(body), body, set(await raw.json()), "messages")
        answer = await _answer(ingress, request, body.model)
        created, rid = int(time.time()), f"chatcmpl-{uuid.uuid4().hex}"
        if body.stream:
            def chunk(delta: DeltaMessage, finish_reason: str | None = None, **extra) -> ChatCompletionStreamResponse:
                return ChatCompletionStreamResponse(id=rid, created=created, model=body.model, choices=[
                    ChatCompletionResponseStreamChoice(index=0, delta=delta, finish_reason=finish_reason)], **extra)

            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return _events([chunk(DeltaMessage(role="assistant", content="")),
                            *(chunk(DeltaMessage(content=piece)) for piece in _pieces(answer.text)),
                            chunk(DeltaMessage(), answer.finish_reason, glore=answer.decision),
                            *([ChatCompletionStreamResponse(id=rid, created=created, model=body.model, choices=[],
                                                            usage=_usage([answer]))] if include_usage else [])])
        response = ChatCompletionResponse(
            id=rid, created=created, model=body.model, usage=_usage([answer]), glore=answer.decision,
            choices=[ChatCompletionResponseChoice(index=0, message=ChatMessage(role="assistant", content=answer.text),
                                                  finish_reason=answer.finish_reason)])
        return JSONResponse(response.model_dump(mode="json", exclude_none=True))

    @api.post("/v1/completions", response_model=CompletionResponse, dependencies=[require_token], responses=errors)
    async def completions(body: CompletionRequest, raw: Request):
        sent = set(await raw.json())
        requests = [_solve_request(question, body, sent, "prompt") for question in _prompts(body)]
        answers = await asyncio.gather(*(_answer(ingress, r, body.model) for r in requests))
        created, rid = int(time.time()), f"cmpl-{uuid.uuid4().hex}"
        glore = None if body.model == POLICY_MODEL else [a.decision for a in answers]
        if body.stream:
            def chunk(index: int, text: str, finish_reason: str | None = None, **extra) -> CompletionStreamResponse:
                return CompletionStreamResponse(id=rid, created=created, model=body.model, choices=[
                    CompletionResponseStreamChoice(index=index, text=text, finish_reason=finish_reason)], **extra)

            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return _events([*(chunk(i, piece) for i, a in enumerate(answers) for piece in _pieces(a.text)),
                            *(chunk(i, "", a.finish_reason, glore=a.decision) for i, a in enumerate(answers)),
                            *([CompletionStreamResponse(id=rid, created=created, model=body.model, choices=[],
                                                        usage=_usage(answers))] if include_usage else [])])
        response = CompletionResponse(
            id=rid, created=created, model=body.model, usage=_usage(answers), glore=glore,
            choices=[CompletionResponseChoice(index=i, text=a.text, finish_reason=a.finish_reason)
                     for i, a in enumerate(answers)])
        return JSONResponse(response.model_dump(mode="json", exclude_none=True))
