"""The evaluation report from per-question records: reward-model accuracy and calibration, the
refinement table with 95% confidence intervals, fixed/broken shares (`report_markdown` writes it as
JSON, Markdown and PNG plots).

A record (evaluation.evaluate_batch) holds a test question's draft and samples, each with its
exact step truth (model organism) or only its correctness (GSM8K/SVAMP), both reward models' step
values, and the correctness of every refinement candidate. Plain Python; no Ray.
"""

from __future__ import annotations

from collections.abc import Sequence

from glore_ray.config.ensemble import EVAL_SCORERS, REPORT_STEP_THRESHOLD, EnsembleSettings
from glore_ray.core.ensemble import rerank
from glore_ray.core.grading import good_steps
from glore_ray.core.stats import auroc, first_error_f1, paired_bootstrap, wilson_interval, within_question_auroc

METHODS = ("greedy", "best_of_k", "best_of_k_with_greedy", "global", "local", "local_orm", "local_oracle_where",
           "global_local_rerank", "rerank_oracle")
CALIBRATION_BINS = 10


def step_truth(first_wrong: int | None, correct: bool, n_steps: int, exact: bool) -> list[bool]:
    """Whether each step is good: before the exact first wrong step (model organism), else the
    solution's final correctness for every step (all that GSM8K/SVAMP can tell)."""
    if exact:
        return good_steps(first_wrong, n_steps)
    return [correct] * n_steps


def oracle_right(correct: dict) -> bool:
    """Whether the draft or any refinement the ensemble ranked is right (records written before
    `refine_samples` hold the two refinements only)."""
    return bool(correct["draft"] or correct.get("any_refinement", correct["global"] or correct["local"]))


def method_outcomes(record: dict) -> dict[str, bool | None]:
    """Whether each method's answer to one question is right (None: not measured for it, such as
    the exact-where row without exact truth)."""
    c = record["correct"]
    return {"greedy": c["draft"], "best_of_k": c["best_of_k"], "best_of_k_with_greedy": c.get("best_of_k_with_greedy"),
            "global": c["global"], "local": c["local"], "local_orm": c["local_orm"],
            "local_oracle_where": c.get("local_oracle_where"), "global_local_rerank": c["chosen"],
            "rerank_oracle": oracle_right(c),
            **{f"round_{r}": ok for r, ok in enumerate(c.get("rounds", [])[1:], start=2)}}


def refinement_table(records: Sequence[dict]) -> dict:
    """Every measured method's accuracy, Wilson interval, fixed and broken shares, and its paired
    difference from greedy (paired bootstrap)."""
    n = len(records)
    outcomes = [method_outcomes(r) for r in records]
    greedy = [o["greedy"] for o in outcomes]
    wrong = [o for o in outcomes if not o["greedy"]]
    right = [o for o in outcomes if o["greedy"]]
    table = {}
    for m in [*METHODS, *(m for m in (outcomes[0] if outcomes else {}) if m not in METHODS)]:  # then the rounds
        if n == 0 or any(o.get(m) is None for o in outcomes):
            continue
        hits = sum(o[m] for o in outcomes)
        lo, hi = wilson_interval(hits, n)
        table[m] = {"accuracy": hits / n, "ci95_low": lo, "ci95_high": hi, "correct": hits,
                    "fixed": sum(o[m] for o in wrong) / len(wrong) if wrong else 0.0,
                    "broken": sum(not o[m] for o in right) / len(right) if right else 0.0,
                    "paired_diff_vs_greedy": paired_bootstrap([o[m] for o in outcomes], greedy)}
    if "global_local_rerank" in table and "rerank_oracle" in table:
        table["global_local_rerank"] |= rerank_choice(records, table)
    return table


def rerank_choice(records: Sequence[dict], table: dict) -> dict:
    """How the reranker chose: `rerank_capture` = (rerank - greedy) / (oracle - greedy), the share
    of what the refiners offered that it took (None when they offered nothing); `kept_draft`, the
    questions whose draft it kept; `kept_wrong_draft`, those where the draft was wrong and a
    refinement right."""
    greedy, rerank, oracle = (table[m]["accuracy"] for m in ("greedy", "global_local_rerank", "rerank_oracle"))
    kept = [r for r in records if r["decision"]["chosen"] == "draft"]
    return {"rerank_capture": (rerank - greedy) / (oracle - greedy) if oracle > greedy else None,
            "kept_draft": len(kept),
            "kept_wrong_draft": sum(not r["correct"]["draft"] and oracle_right(r["correct"]) for r in kept)}


def replay_choice(record: dict, model: str, settings: EnsembleSettings = EnsembleSettings()) -> tuple[str, bool] | None:
    """The ensemble's round-one choice (candidate name, whether it is right) had `model` ranked the
    draft and its refinements under `settings`' offsets, from the scores the evaluation recorded;
    None where it did not score the draft."""
    draft = record["solutions"][0]
    if not draft.get(model):
        return None
    candidates = {"draft": draft} | {n: c for n, c in record.get("candidates", {}).items() if c.get(model)}
    chosen = rerank({n: c[model][-1] for n, c in candidates.items()}, settings)
    return chosen, candidates[chosen]["correct"]


def rerank_by(records: Sequence[dict], table: dict, settings: EnsembleSettings = EnsembleSettings()) -> dict:
    """The choice among each question's draft and refinements (round one) had each reward model
    ranked them (`replay_choice`): accuracy, paired difference from greedy, `rerank_capture` and
    `kept_draft` per model. Says which verifier the combination is short of without a re-run."""
    greedy, oracle = table["greedy"]["accuracy"], table["rerank_oracle"]["accuracy"]
    out = {}
    for model in EVAL_SCORERS:
        choices = [replay_choice(r, model, settings) for r in records]
        if None in choices:
            continue
        right = [ok for _, ok in choices]
        accuracy = sum(right) / len(right)
        out[model] = {"accuracy": accuracy,
                      "paired_diff_vs_greedy": paired_bootstrap(right, [r["correct"]["draft"] for r in records]),
                      "rerank_capture": (accuracy - greedy) / (oracle - greedy) if oracle > greedy else None,
                      "kept_draft": sum(name == "draft" for name, _ in choices)}
    return out


def iteration_gap(records: Sequence[dict], k: int, policy: dict) -> dict:
    """Each refinement round's accuracy (round 1: the ensemble's choice) and the share of the gap
    from greedy to pass@k (the report's `policy` figures) it closes."""
    greedy, pass_at_k = policy["greedy_accuracy"], policy["pass_at_k"]
    rounds = len(records[0]["correct"].get("rounds", [])) if records else 0
    out = {}
    for i in range(rounds):
        accuracy = sum(r["correct"]["rounds"][i] for r in records) / len(records)
        out[f"round_{i + 1}"] = {"accuracy": accuracy, "gap_closed": (accuracy - greedy) / (pass_at_k - greedy)
                                 if pass_at_k > greedy else None}
    return {"greedy_to_pass_at_k": f"greedy {greedy:.4f} -> pass@{k} {pass_at_k:.4f}", **out}


def _candidates(record: dict) -> list[dict]:
    """The solutions the ensemble ranks for one question: the greedy draft, then its distinct
    refinements (a refinement identical to the draft is the same candidate)."""
    draft = record["solutions"][0]
    seen, out = {draft.get("text")}, [draft]
    for candidate in record.get("candidates", {}).values():
        if candidate["text"] not in seen:
            seen.add(candidate["text"])
            out.append(candidate)
    return out


def decision_metrics(records: Sequence[dict], model: str) -> dict:
    """A reward model measured where the ensemble decides (issue 25, part 3):
    - `candidate_auroc`: within-question AUROC over the candidates it ranks (draft, global, local);
    - `rescue_auroc`: the same on the pairs of a wrong draft and a right refinement (what the
      combination gains from; a likelihood verifier fails here);
    - `draft_auroc`: right against wrong greedy drafts, across questions ("when");
    - `draft_first_error_f1`: first-error F1 on greedy drafts ("where"; exact truth only);
    - `within_question_auroc_by_error_kind`: within-question AUROC on drafts and samples, on the
      pairs whose wrong solution fails by each of the checker's error kinds ({kind: {auroc, pairs}})."""
    # Every list starts with its draft: a question whose draft the model could not read (no steps) is left out.
    candidates = [[c for c in _candidates(r) if c.get(model)] for r in records if r["solutions"][0].get(model)]
    candidate_auroc, candidate_pairs = within_question_auroc([[(c[model][-1], c["correct"]) for c in cs]
                                                              for cs in candidates])
    rescue_auroc, rescue_pairs = _rescue(candidates, model)
    drafts = [(r["solutions"][0], r["step_truth"]) for r in records if r["solutions"][0].get(model)]
    kinds: dict[str, list] = {}
    for r in records:
        scored = [s for s in r["solutions"] if s.get(model)]
        for kind in {s.get("error_kind") for s in scored if not s["correct"] and s.get("error_kind")}:
            kinds.setdefault(kind, []).append([(s[model][-1], s["correct"]) for s in scored
                                               if s["correct"] or s.get("error_kind") == kind])
    by_kind = {}
    for kind, groups in sorted(kinds.items()):
        value, pairs = within_question_auroc(groups)
        if pairs:
            by_kind[kind] = {"auroc": value, "pairs": pairs}
    return {"candidate_auroc": candidate_auroc, "candidate_pairs": candidate_pairs,
            "rescue_auroc": rescue_auroc, "rescue_pairs": rescue_pairs,
            "draft_auroc": auroc([d[model][-1] for d, _ in drafts], [d["correct"] for d, _ in drafts]),
            "draft_first_error_f1": first_error_f1([(d[model], d["first_wrong"]) for d, exact in drafts if exact],
                                                   REPORT_STEP_THRESHOLD),
            "within_question_auroc_by_error_kind": by_kind}


def _rescue(candidates: Sequence[Sequence[dict]], model: str) -> tuple[float | None, int]:
    """Within-question AUROC on the pairs of a wrong draft (each list's first) and a right refinement."""
    return within_question_auroc([[(cs[0][model][-1], False)] + [(c[model][-1], True) for c in cs[1:] if c["correct"]]
                                  for cs in candidates if cs and not cs[0]["correct"]])


def reward_model_metrics(records: Sequence[dict], model: str) -> dict:
    """A step-reward model over every scored solution (drafts and samples; a value >= 0.5 means
    good): step accuracy, balanced step accuracy (mean of the accuracy on good and on bad steps),
    ProcessBench's first-error F1 (exact truth only), final-answer accuracy, the final value's AUROC
    pooled over questions and within questions (what reranking needs), and calibration bins."""
    good = [0, 0]  # right, seen
    bad = [0, 0]
    final_right = solutions = 0
    first_errors: list[tuple[Sequence[float], int | None]] = []
    groups: list[list[tuple[float, bool]]] = []
    finals: list[float] = []
    outcomes: list[bool] = []
    bins = [[0, 0.0, 0] for _ in range(CALIBRATION_BINS)]  # count, sum of values, correct
    for record in records:
        scored = [s for s in record["solutions"] if s.get(model)]
        for s in scored:
            values = s[model]
            truth = step_truth(s["first_wrong"], s["correct"], len(values), record["step_truth"])
            for v, t in zip(values, truth, strict=True):
                tally = good if t else bad
                tally[0] += (v >= 0.5) == t
                tally[1] += 1
            if record["step_truth"]:
                first_errors.append((values, s["first_wrong"]))
            final_right += (values[-1] >= 0.5) == s["correct"]
            solutions += 1
            finals.append(values[-1])
            outcomes.append(s["correct"])
            b = bins[min(int(values[-1] * CALIBRATION_BINS), CALIBRATION_BINS - 1)]
            b[0], b[1], b[2] = b[0] + 1, b[1] + values[-1], b[2] + s["correct"]
        groups.append([(s[model][-1], s["correct"]) for s in scored])
    within, pairs = within_question_auroc(groups)
    accuracies = [right / seen for right, seen in (good, bad) if seen]
    steps_n = good[1] + bad[1]
    return {**decision_metrics(records, model), "step_accuracy": (good[0] + bad[0]) / steps_n if steps_n else 0.0,
            "balanced_step_accuracy": sum(accuracies) / len(accuracies) if accuracies else 0.0,
            "first_error_f1": first_error_f1(first_errors, REPORT_STEP_THRESHOLD),
            "final_accuracy": final_right / solutions if solutions else 0.0,
            "final_auroc": auroc(finals, outcomes),
            "within_question_auroc": within,
            "within_question_pairs": pairs,
            "correct_share": sum(outcomes) / solutions if solutions else 0.0,
            "n_steps": steps_n, "n_solutions": solutions,
            "calibration": [{"bin": i / CALIBRATION_BINS, "count": c, "mean_value": v / c, "accuracy": k / c}
                            for i, (c, v, k) in enumerate(bins) if c]}


def build_report(records: Sequence[dict], k: int, settings: dict, run_name: str, split: str = "test") -> dict:
    exact = sum(r["step_truth"] for r in records)
    samples = [s for r in records for s in r["solutions"][1:]]
    chosen: dict[str, int] = {}
    for r in records:
        chosen[r["decision"]["chosen"]] = chosen.get(r["decision"]["chosen"], 0) + 1
    policy = {"greedy_accuracy": sum(r["correct"]["draft"] for r in records) / max(len(records), 1),
              "sample_accuracy": sum(s["correct"] for s in samples) / max(len(samples), 1),
              "pass_at_k": sum(any(s["correct"] for s in r["solutions"][1:]) for r in records) / max(len(records), 1)}
    return {
        "run_name": run_name, "split": split, "n_test": len(records), "k": k, "settings": settings,
        "step_truth": "exact (model organism)" if exact == len(records) else "final answer only",
        "policy": policy,
        "reward_models": {m: reward_model_metrics(records, m) for m in EVAL_SCORERS
                          if any(m in s for r in records for s in r["solutions"])},
        "refinement": (table := refinement_table(records)),
        "rerank_by": rerank_by(records, table) if records and "rerank_oracle" in table else {},
        "iteration": iteration_gap(records, k, policy),
        "ensemble": {"refined": sum(r["decision"]["refined"] for r in records),
                     "local_located": sum(r["decision"]["first_bad_step"] is not None for r in records),
                     "chosen": chosen},
    }


