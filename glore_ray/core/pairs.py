"""The refiners' training pairs (TRL-style rows: question, draft, target), as plain functions over
a question's graded rollouts (global) and its SORM label rows (local)."""

from __future__ import annotations

import zlib
from collections.abc import Mapping

from glore_ray.core.grading import answer_line, render_solution, split_steps
from glore_ray.core.labels import first_negative, is_heldout
from glore_ray.core.rollouts import Question


def local_pair(row: Mapping, identity_share: float = 0.0) -> dict | None:
    """The local refiner's row from a SORM label row (TRL's layout: `prompt`, `completions` the
    rollout's steps, `labels`, and the two continuations), or None without both continuations:
    draft = P_f + a bad continuation, [BAD] before step f; target = a good continuation of P_{f-1}.
    A right rollout in the `identity_share` is marked at one of its steps and continued as written."""
    steps, labels = list(row["completions"]), list(row["labels"])
    reasoning = [step for step in steps if answer_line(step) is None]
    if all(labels) and len(reasoning) < len(steps):  # a right rollout: its answer line is labelled good
        if not reasoning or not is_heldout(row["id"], identity_share):
            return None
        # With always_refine the ensemble rewrites right drafts too (a false alarm of "where" can
        # flag any step): marked at a step chosen by a stable hash, the target is its own remainder.
        f = zlib.crc32(f"{row['id']}/mark".encode()) % len(reasoning)
        return {"id": f"{row['id']}/local-identity", "question": row["prompt"], "draft_steps": reasoning,
                "bad_step": f, "target": "\n".join(steps[f:])}
    f = first_negative(labels)
    if row["pos_continuation"] is None or row["neg_continuation"] is None:
        return None
    if f >= len(reasoning):
        # Every reasoning step is labelled good (a wrong rollout whose prefixes all still succeed):
        # there is no step to rewrite from, as in the ensemble, which never rewrites the answer line.
        return None
    return {"id": f"{row['id']}/local", "question": row["prompt"],
            "draft_steps": steps[:f + 1] + split_steps(row["neg_continuation"]), "bad_step": f,
            "target": row["pos_continuation"]}


def global_pairs(question: Question, identity_share: float = 0.0, reference_targets: bool = False) -> list[dict]:
    """Each incorrect rollout paired with a correct one of the same question (cycling through them);
    with `reference_targets`, a question with no correct rollout pairs them with its reference
    solution (where the data has one). Each correct rollout in the `identity_share` (by a stable
    hash of its id) is also paired with itself: refining a right draft should keep it right."""
    correct = [r.text for r in question.rollouts if r.correct]
    identity = [{"id": f"{r.id}/global-identity", "question": question.question, "draft": r.text, "target": r.text}
                for r in question.rollouts if r.correct and is_heldout(r.id, identity_share)]
    kind = "global"
    if not correct and reference_targets and question.steps:
        correct, kind = [render_solution(question.steps, question.answer)], "global-reference"
    if not correct:
        return []
    wrong = [r for r in question.rollouts if not r.correct]
    return [{"id": f"{r.id}/{kind}", "question": question.question, "draft": r.text,
             "target": correct[j % len(correct)]} for j, r in enumerate(wrong)] + identity
