"""What the core asks of a model: an Engine turns prompts and Sampling settings into Generations,
a StepScorer turns solutions into per-step values. The models package implements them (vLLM,
transformers), the pipeline and Serve reach them remotely; the core imports none of those.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class Sampling:
    n: int = 1
    temperature: float = 1.0
    """0 is greedy."""
    top_p: float = 1.0
    max_tokens: int = 256
    stop: tuple[str, ...] = ()
    seed: int = 0


@dataclass
class Completion:
    text: str
    n_tokens: int
    """Generated tokens, the EOS token included."""
    finish_reason: str
    """`stop` (EOS or a stop string) or `length`."""


@dataclass
class Generation:
    prompt: str
    prompt_tokens: int
    completions: list[Completion] = field(default_factory=list)


@dataclass
class Usage:
    """Tokens spent on generation: each call's prompt, and every completion."""

    prompt_tokens: int = 0
    completion_tokens: int = 0

    def add(self, generation: Generation) -> None:
        self.prompt_tokens += generation.prompt_tokens
        self.completion_tokens += sum(c.n_tokens for c in generation.completions)


class Engine(Protocol):
    name: str

    def generate(self, prompts: Sequence[str], sampling: Sampling | Sequence[Sampling]) -> list[Generation]:
        """One Sampling for every prompt, or one per prompt (as vLLM takes them): prompts with
        different settings then share one engine call."""
        ...


def per_prompt(prompts: Sequence[str], sampling: Sampling | Sequence[Sampling]) -> list[Sampling]:
    """Each prompt's Sampling from what `Engine.generate` takes."""
    if isinstance(sampling, Sampling):
        return [sampling] * len(prompts)
    if len(sampling) != len(prompts):
        raise ValueError(f"{len(sampling)} Sampling settings for {len(prompts)} prompts")
    return list(sampling)


class StepScorer(Protocol):
    def score(self, questions: Sequence[str], steps: Sequence[Sequence[str]]) -> list[list[float]]:
        """P(good) at the end of every step of each solution."""
        ...


class Likelihood(Protocol):
    def mean_logprobs(self, questions: Sequence[str], steps: Sequence[Sequence[str]]) -> list[list[float]]:
        """A policy's mean token log-probability of each solution up to the end of every step, the
        solution read as the reward models read it (the solve prompt, then each step and its
        newline); [] for a solution without steps."""
        ...
