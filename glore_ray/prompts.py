"""Prompt formats, shared by training and inference so the two never drift apart."""

from __future__ import annotations


def solve_prompt(question: str) -> str:
    """The policy's prompt: the solution follows, one step per line, then `#### <answer>`."""
    return f"Question: {question}\nAnswer:\n"
