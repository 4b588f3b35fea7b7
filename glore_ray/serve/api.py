"""The HTTP contract of the Serve app, free of Ray: request and response schemas, the per-request
ensemble settings, and the bearer-token check. `ingress.build_api` wires them into FastAPI routes.

Requests carry text and numbers only: nothing in them names a file, a model or a path.
"""

from __future__ import annotations

import dataclasses
import hmac
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from glore_ray.config import ServeConfig
from glore_ray.config.ensemble import EnsembleSettings
from glore_ray.core.ensemble import Decision


class RequestError(ValueError):
    """A request the schema accepts but the server does not: beyond its limits (422), or asking for
    what the ensemble does not do (400). `param` names the field."""

    def __init__(self, message: str, status: int = 422, param: str | None = None):
        super().__init__(message)
        self.status, self.param = status, param


class SolveSettings(BaseModel):
    """Per-request overrides of the server's ensemble settings."""

    model_config = ConfigDict(extra="forbid")

    always_refine: bool | None = None
    orm_threshold: float | None = Field(None, ge=0, le=1)
    step_threshold: float | None = Field(None, ge=0, le=1)
    where: Literal["sorm", "orm"] | None = None
    """Which reward model locates the first bad step."""
    max_tokens: int | None = Field(None, ge=1)
    """Tokens per generation, at most the server's (`ensemble.max_tokens`, else `sampling.max_tokens`)."""
    max_rounds: int | None = Field(None, ge=1)
    """Refinement rounds, at most the server's `serve.max_rounds` (1: the ensemble once; each later
    round refines the previous round's answer while the ORM scores it below `orm_threshold`)."""


def _text(value: str, field: str) -> str:
    """Text a tokenizer can take: not blank, and encodable as UTF-8 (JSON's escapes can carry a lone
    surrogate, which no model input can)."""
    if not value.strip():
        raise ValueError(f"the {field} is blank")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"the {field} holds a lone surrogate (\\u{ord(value[e.start]):04x}) at "
                         f"character {e.start}: not text") from None
    return value


class SolveRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    question: str = Field(min_length=1)
    draft: str | None = None
    """A solution to refine instead of the policy's greedy draft (one step per line)."""
    settings: SolveSettings = Field(default_factory=SolveSettings)

    @field_validator("question")
    @classmethod
    def _question_text(cls, value: str) -> str:
        return _text(value, "question")

    @field_validator("draft")
    @classmethod
    def _draft_text(cls, value: str | None) -> str | None:
        return None if value is None else _text(value, "draft")


class SolveResponse(BaseModel):
    answer: str | None
    """The chosen candidate's final answer (None when it states none)."""
    chosen: str
    """The candidate chosen: `draft`, `global`, `local`, or a refiner's further sample (`global_2`, ...)."""
    draft: str
    global_: str | None = Field(alias="global")
    local: str | None
    samples: dict[str, str] = {}
    """The refiners' further samples by candidate name (`ensemble.refine_samples` > 1)."""
    orm_scores: dict[str, float]
    """The ORM's score of each candidate it saw."""
    first_bad_step: int | None
    """0-based step the local refiner rewrote from; None when no step fell below the threshold."""
    step_values: list[float]
    """The locating model's value of each of the draft's steps, then of its answer line."""
    refined: bool
    """Whether the draft was refined (its ORM score was below the threshold, or always_refine)."""
    usage: dict[str, int] = {}
    """`prompt_tokens` and `completion_tokens` summed over the generations made for this question."""
    rounds: list[str] = []
    """With `max_rounds` > 1: each round's answer text, round 1's first; the fields above are round
    1's decision, except `answer`, which is the last round's."""

    model_config = ConfigDict(populate_by_name=True)

    @classmethod
    def from_rounds(cls, decided: Sequence[Decision]) -> SolveResponse:
        """The response for each round's deciding Decision (`core.ensemble.iterate`), round 1 first."""
        d, distinct = decided[0], list({id(x): x for x in decided}.values())
        usage = {"prompt_tokens": sum(x.usage.prompt_tokens for x in distinct),
                 "completion_tokens": sum(x.usage.completion_tokens for x in distinct)}
        return cls(answer=decided[-1].answer, chosen=d.chosen, draft=d.draft, global_=d.global_, local=d.local,
                   samples=d.samples, orm_scores=d.orm_scores, first_bad_step=d.first_bad_step, step_values=d.step_values,
                   refined=d.refined, usage=usage,
                   rounds=[x.candidate(x.chosen) for x in decided] if len(decided) > 1 else [])


def ensemble_settings(request: SolveRequest, served: EnsembleSettings, cfg: ServeConfig) -> EnsembleSettings:
    """The served settings (the `ensemble:` section, its `max_tokens` resolved) with the request's
    overrides, within the server's limits."""
    if len(request.question) > cfg.max_question_chars:
        raise RequestError(f"question: {len(request.question)} characters; the limit is {cfg.max_question_chars}",
                           param="question")
    if request.draft is not None and len(request.draft) > cfg.max_draft_chars:
        raise RequestError(f"draft: {len(request.draft)} characters; the limit is {cfg.max_draft_chars}", param="draft")
    s = request.settings
    if s.max_tokens is not None and s.max_tokens > served.max_tokens:
        raise RequestError(f"settings.max_tokens: {s.max_tokens} exceeds the server's {served.max_tokens}",
                           param="max_tokens")
    if s.max_rounds is not None and s.max_rounds > cfg.max_rounds:
        raise RequestError(f"settings.max_rounds: {s.max_rounds} exceeds the server's {cfg.max_rounds}",
                           param="max_rounds")
    return dataclasses.replace(served, **s.model_dump(exclude={"max_rounds"}, exclude_none=True))


def load_token(cfg: ServeConfig) -> str | None:
    """The bearer token /v1/solve requires: from `token_file`, else `$token_env`; None: no token."""
    if cfg.token_file:
        path = Path(cfg.token_file)
        if not path.is_file():
            raise FileNotFoundError(f"serve.token_file: {path} does not exist")
        token = path.read_text().strip()
        if not token:
            raise ValueError(f"serve.token_file: {path} is empty")
        return token
    return os.environ.get(cfg.token_env) or None


def authorized(header: str | None, token: str | None) -> bool:
    """Whether an `Authorization` header carries the token (always, when none is set)."""
    if token is None:
        return True
    scheme, _, given = (header or "").partition(" ")
    # Constant-time comparison: response timing must not reveal how much of a guess was right.
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())
