"""Prompt formats, shared by training and inference so the two never drift apart."""

from __future__ import annotations


def solve_prompt(question: str) -> str:
    """The policy's prompt: the solution follows, one step per line, then `#### <answer>`."""
    return f"Question: {question}\nAnswer:\n"


BAD_MARK = "[BAD]"
"""Put before the first wrong step of a draft for the local refiner."""


def global_refine_prompt(question: str, draft: str) -> str:
    """The global refiner rewrites a whole (probably wrong) draft."""
    return f"Question: {question}\nDraft:\n{draft.strip()}\nRefined answer:\n"


def mark_bad_step(steps: list[str], bad_step: int) -> str:
    """The draft's steps with BAD_MARK before step `bad_step` (0-based)."""
    if not 0 <= bad_step < len(steps):
        raise ValueError(f"bad_step {bad_step} is outside the draft's {len(steps)} steps")
    return "\n".join(steps[:bad_step] + [f"{BAD_MARK} {steps[bad_step]}"] + steps[bad_step + 1:])


def local_refine_prompt(question: str, steps: list[str], bad_step: int) -> str:
    """The local refiner continues from the marked step: its output replaces steps[bad_step:]."""
    return f"Question: {question}\nDraft:\n{mark_bad_step(steps, bad_step)}\nRefined from {BAD_MARK}:\n"
