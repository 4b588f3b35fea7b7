"""A model in another process behind the core's Engine, StepScorer and Likelihood interfaces: a Ray actor (the
evaluation's model servers) or a Serve deployment (the app's ingress). Only how a call's result is
awaited differs, so the caller passes it in as `resolve`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from glore_ray.core.generation import Generation, Sampling

Resolve = Callable[[str, Any], Any]
"""(model name, the call's future: an ObjectRef or a DeploymentResponse) -> its result."""


class RemoteModel:
    """`routed`: the handle hosts several models, and each call names its model first."""

    def __init__(self, name: str, handle, resolve: Resolve, routed: bool = False):
        self.name, self.handle, self.resolve = name, handle, resolve
        self.route = (name,) if routed else ()

    def generate(self, prompts: Sequence[str], sampling: Sampling) -> list[Generation]:
        return self.resolve(self.name, self.handle.generate.remote(*self.route, list(prompts), sampling))

    def mean_logprobs(self, questions: Sequence[str], steps: Sequence[Sequence[str]]) -> list[list[float]]:
        return self.resolve(self.name, self.handle.mean_logprobs.remote(*self.route, list(questions),
                                                                        [list(s) for s in steps]))

    def score(self, questions: Sequence[str], steps: Sequence[Sequence[str]]) -> list[list[float]]:
        return self.resolve(self.name, self.handle.score.remote(*self.route, list(questions),
                                                                [list(s) for s in steps]))
