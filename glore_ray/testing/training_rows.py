"""Training rows for each objective, built from organism problems with known corruptions (the
rollout and labelling stages produce the same layouts from real samples)."""

from __future__ import annotations

import random

from glore_ray.config import OrganismConfig
from glore_ray.core.grading import render_solution
from glore_ray.core.organism import generate, parse_equation


def corrupt(steps: list[str], i: int, rng: random.Random | None = None) -> list[str]:
    """The steps with step i's result off by 1 or 2 (the checker's `arithmetic` error)."""
    rng = rng or random.Random(i)
    eq = parse_equation(steps[i])
    wrong = eq.result + rng.choice([-2, -1, 1, 2])
    return steps[:i] + [steps[i].replace(f"= {eq.result}", f"= {wrong}")] + steps[i + 1:]


def rows(objective: str, n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for p in generate(OrganismConfig(), "train", n, start=seed * n):
        steps = list(p.steps)
        i = rng.randrange(len(steps))
        bad = corrupt(steps, i, rng)
        if objective == "policy":
            out.append({"id": p.id, "question": p.question, "solution": p.solution()})
        elif objective == "global_refiner":
            out.append({"id": p.id, "question": p.question, "draft": render_solution(bad, "0"), "target": p.solution()})
        elif objective == "local_refiner":
            out.append({"id": p.id, "question": p.question, "draft_steps": bad, "bad_step": i,
                        "target": render_solution(steps[i:], p.answer)})
        else:  # orm labels every step with the final outcome; sorm marks the first wrong step and after
            labels = [False] * len(steps) if objective == "orm" else [j < i for j in range(len(steps))]
            out.append({"id": p.id, "prompt": p.question, "completions": bad, "labels": labels})
    return out
