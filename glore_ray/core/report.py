"""The evaluation report from per-question records: reward-model accuracy and calibration, the
refinement table with 95% confidence intervals, fixed/broken shares; JSON, Markdown and PNG plots.

A record (evaluation.evaluate_batch) holds a test question's draft and samples, each with its
exact step truth (model organism) or only its correctness (GSM8K/SVAMP), both reward models' step
values, and the correctness of every refinement candidate. Plain Python; no Ray.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path

from glore_ray.core.ensemble import EnsembleSettings, rerank
from glore_ray.core.grading import good_steps

METHODS = ("greedy", "best_of_k", "best_of_k_with_greedy", "global", "local", "local_orm", "local_oracle_where",
           "global_local_rerank", "rerank_oracle")
METHOD_TITLES = {
    "greedy": "greedy draft",
    "best_of_k": "{ranker}-reranked best of {k} samples",
    "best_of_k_with_greedy": "{ranker}-reranked best of the greedy draft and {k_minus_1} samples",
    "global": "global refinement only",
    "local": "local refinement only (where: SORM)",
    "local_orm": "local refinement only (where: ORM)",
    "local_oracle_where": "local refinement only (where: the exact first wrong step)",
    "global_local_rerank": "global + local + {ranker} rerank",
    "rerank_oracle": "rerank oracle (any of draft and refinements)",
}
ROUND_TITLE = "iterated: round {r} (refine again below the {ranker} threshold)"
REWARD_MODELS = ("orm", "sorm", "prm", "reranker")
"""The step-reward models a record may hold: the PRM (trained on exact step labels) only on the
model organism, the reranker (the ORM with the policy's likelihood) only with `reranker.likelihood`."""
RANKERS = {"orm": "ORM", "reranker": "ORM+likelihood"}
"""`settings.ranked_by` (what ranked the best-of rows and the ensemble's candidates) as the tables name it."""
BOOTSTRAP_RESAMPLES = 10_000
CALIBRATION_BINS = 10


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion (sound at 0 and 1, unlike the normal one)."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


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


def paired_bootstrap(method: Sequence[bool], baseline: Sequence[bool], resamples: int = BOOTSTRAP_RESAMPLES,
                     seed: int = 0) -> dict:
    """Mean paired difference (method - baseline) of per-question outcomes and its 95% percentile
    interval from a bootstrap over questions. Each difference is -1, 0 or 1, so resampling n
    questions is one multinomial draw over those three counts."""
    import numpy as np

    diffs = [int(a) - int(b) for a, b in zip(method, baseline, strict=True)]
    n = len(diffs)
    if n == 0:
        return {"mean": 0.0, "low": 0.0, "high": 0.0}
    probs = [diffs.count(v) / n for v in (-1, 0, 1)]
    counts = np.random.default_rng(seed).multinomial(n, probs, size=resamples)
    means = (counts[:, 2] - counts[:, 0]) / n
    low, high = np.percentile(means, [2.5, 97.5])
    return {"mean": sum(diffs) / n, "low": float(low), "high": float(high)}


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
    for model in REWARD_MODELS:
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


def auroc(scores: Sequence[float], labels: Sequence[bool]) -> float | None:
    """Probability that a random correct solution scores above a random wrong one (ties count
    half): how well a model ranks, whatever its threshold. None without both kinds."""
    order = sorted(range(len(scores)), key=lambda i: scores[i])
    ranks = [0.0] * len(scores)
    i = 0
    while i < len(order):  # average ranks over ties
        j = i
        while j + 1 < len(order) and scores[order[j + 1]] == scores[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    positives = sum(labels)
    negatives = len(labels) - positives
    if not positives or not negatives:
        return None
    rank_sum = sum(r for r, label in zip(ranks, labels) if label)
    return (rank_sum - positives * (positives + 1) / 2) / (positives * negatives)


def within_question_auroc(groups: Iterable[Sequence[tuple[float, bool]]]) -> tuple[float | None, int]:
    """(P(a right solution outscores a wrong one of the same question), ties half; the number of
    such pairs) over groups of (score, correct), one group per question. None without a pair."""
    concordant, pairs = 0.0, 0
    for group in groups:
        for right, _ in (g for g in group if g[1]):
            for wrong, _ in (g for g in group if not g[1]):
                pairs += 1
                concordant += 1.0 if right > wrong else 0.5 if right == wrong else 0.0
    return (concordant / pairs if pairs else None), pairs


def _first_flagged(values: Sequence[float], threshold: float) -> int | None:
    return next((i for i, v in enumerate(values) if v < threshold), None)


def _harmonic_mean(*tallies: Sequence[int]) -> float | None:
    """Harmonic mean of the accuracies right/seen of the tallies; None unless every one was seen."""
    if not all(seen for _, seen in tallies):
        return None
    accuracies = [right / seen for right, seen in tallies]
    return 0.0 if 0.0 in accuracies else len(accuracies) / sum(1 / a for a in accuracies)


def first_error_f1(solutions: Iterable[tuple[Sequence[float], int | None]], threshold: float = 0.5) -> float | None:
    """ProcessBench's first-error F1 over (step values, exact first wrong step) pairs: the harmonic
    mean of the accuracy on erroneous solutions (the first value below `threshold` is at the first
    wrong step) and on error-free ones (no value below it). None unless both kinds were seen."""
    erroneous, error_free = [0, 0], [0, 0]  # right, seen
    for values, first_wrong in solutions:
        flagged = _first_flagged(values, threshold)
        tally = error_free if first_wrong is None else erroneous
        tally[0] += flagged == first_wrong
        tally[1] += 1
    return _harmonic_mean(erroneous, error_free)


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
            "draft_first_error_f1": first_error_f1([(d[model], d["first_wrong"]) for d, exact in drafts if exact]),
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
            "first_error_f1": first_error_f1(first_errors),
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
        "reward_models": {m: reward_model_metrics(records, m) for m in REWARD_MODELS
                          if any(m in s for r in records for s in r["solutions"])},
        "refinement": (table := refinement_table(records)),
        "rerank_by": rerank_by(records, table) if records and "rerank_oracle" in table else {},
        "iteration": iteration_gap(records, k, policy),
        "ensemble": {"refined": sum(r["decision"]["refined"] for r in records),
                     "local_located": sum(r["decision"]["first_bad_step"] is not None for r in records),
                     "chosen": chosen},
    }


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def _fmt(x: float | None, digits: int = 3) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def _signed_pct(x: float) -> str:
    return f"{100 * x:+.1f}"


def tables(report: dict) -> str:
    """The report's tables, in Markdown."""
    k, ranker = report["k"], RANKERS[report["settings"].get("ranked_by", "orm")]
    lines = [f"Reward models on {report['n_test']} {report['split']} questions' drafts and samples "
             f"(step truth: {report['step_truth']}; steps include the answer line)", "",
             "| model | step accuracy | balanced step accuracy | first-error F1 | final-answer accuracy | final AUROC "
             "| within-question AUROC | steps | solutions (correct) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for m, r in report["reward_models"].items():
        lines.append(f"| {RANKERS['reranker'] if m == 'reranker' else m.upper()} | {_pct(r['step_accuracy'])} | {_pct(r['balanced_step_accuracy'])} "
                     f"| {_fmt(r['first_error_f1'])} | {_pct(r['final_accuracy'])} | {_fmt(r['final_auroc'])} "
                     f"| {_fmt(r['within_question_auroc'])} | {r['n_steps']} "
                     f"| {r['n_solutions']} ({_pct(r['correct_share'])}%) |")
    lines += ["", "Where the ensemble decides: candidate AUROC over each question's draft and refinements, rescue AUROC "
              "on a wrong draft against a right refinement, draft AUROC across questions (when), first-error F1 on "
              "the drafts (where)", "",
              "| model | candidate AUROC (pairs) | rescue AUROC (pairs) | draft AUROC | draft first-error F1 "
              "| within-question AUROC by error kind |", "|---|---|---|---|---|---|"]
    for m, r in report["reward_models"].items():
        kinds = ", ".join(f"{kind} {_fmt(v['auroc'])} ({v['pairs']})"
                          for kind, v in r.get("within_question_auroc_by_error_kind", {}).items())
        lines.append(f"| {RANKERS['reranker'] if m == 'reranker' else m.upper()} "
                     f"| {_fmt(r.get('candidate_auroc'))} ({r.get('candidate_pairs', 0)}) "
                     f"| {_fmt(r.get('rescue_auroc'))} ({r.get('rescue_pairs', 0)}) | {_fmt(r.get('draft_auroc'))} "
                     f"| {_fmt(r.get('draft_first_error_f1'))} | {kinds or '–'} |")
    lines += ["", f"Refinement on {report['n_test']} {report['split']} questions (accuracy %, 95% Wilson interval; difference "
              "from greedy with its paired 95% bootstrap interval over questions; fixed = share of wrong drafts made "
              "right, broken = share of right drafts made wrong)", "",
              "| method | accuracy | 95% CI | vs greedy (paired 95% CI) | fixed | broken |",
              "|---|---|---|---|---|---|"]
    for m, r in report["refinement"].items():
        d = r["paired_diff_vs_greedy"]
        title = (METHOD_TITLES.get(m) or ROUND_TITLE).format(k=k, k_minus_1=k - 1, ranker=ranker,
                                                             r=m.removeprefix("round_"))
        lines.append(f"| {title} | {_pct(r['accuracy'])} "
                     f"| {_pct(r['ci95_low'])}–{_pct(r['ci95_high'])} "
                     f"| {_signed_pct(d['mean'])} ({_signed_pct(d['low'])} to {_signed_pct(d['high'])}) "
                     f"| {_pct(r['fixed'])} | {_pct(r['broken'])} |")
    if (choice := report["refinement"].get("global_local_rerank", {})).get("kept_draft") is not None:
        lines += ["", f"The {ranker} rerank took {_fmt(choice['rerank_capture'])} of the oracle's gain over greedy; it "
                  f"kept the draft in {choice['kept_draft']} of {report['n_test']} questions, {choice['kept_wrong_draft']} "
                  "of them with a wrong draft and a right refinement."]
    if report.get("rerank_by"):
        lines += ["", "The same choice ranked by each reward model (round one's candidates; accuracy %, vs greedy "
                  "with its paired 95% interval, share of the oracle's gain taken, drafts kept): "
                  + "; ".join(f"{RANKERS['reranker'] if m == 'reranker' else m.upper()} {_pct(r['accuracy'])}, "
                              f"{_signed_pct(r['paired_diff_vs_greedy']['mean'])} "
                              f"({_signed_pct(r['paired_diff_vs_greedy']['low'])} to "
                              f"{_signed_pct(r['paired_diff_vs_greedy']['high'])}), capture "
                              f"{_fmt(r['rerank_capture'])}, kept {r['kept_draft']}"
                              for m, r in report["rerank_by"].items())]
    rounds = {name: r for name, r in report.get("iteration", {}).items() if name.startswith("round_")}
    if len(rounds) > 1:
        lines += ["", f"Iterated refinement ({report['iteration']['greedy_to_pass_at_k']}): share of that gap each "
                  "round closes: " + ", ".join(f"{name.replace('_', ' ')} {_fmt(r['gap_closed'])}"
                                              for name, r in rounds.items())]
    return "\n".join(lines)


def method_key(method: str, k: int) -> str:
    """A method's key in report.json: `best_of_k` named by its k (`best_of_3`), the key users read."""
    return method.replace("best_of_k", f"best_of_{k}")


def report_json(report: dict) -> dict:
    """The report with the best-of rows named by their k."""
    out = json.loads(json.dumps(report))
    out["refinement"] = {method_key(m, report["k"]): row for m, row in out["refinement"].items()}
    return out


def write_report(report: dict, out_dir: str | Path) -> list[Path]:
    """report.json, report.md and the PNG plots under `out_dir`; returns the files written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report_json(report), indent=2) + "\n")
    plots = _plots(report, out)
    policy = report["policy"]
    md = [f"# GLoRe evaluation: {report['run_name']}", "",
          f"Policy: greedy {_pct(policy['greedy_accuracy'])}%, per sample {_pct(policy['sample_accuracy'])}%, "
          f"pass@{report['k']} {_pct(policy['pass_at_k'])}%. Ensemble settings: `{json.dumps(report['settings'])}`.",
          "", tables(report), "", *[f"![{p.stem}]({p.name})" for p in plots], ""]
    (out / "report.md").write_text("\n".join(md))
    return [out / "report.json", out / "report.md", *plots]


def _plots(report: dict, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on cluster nodes
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    for m, style in zip(report["reward_models"], ("o-", "s-", "^-")):
        bins = report["reward_models"][m]["calibration"]
        ax.plot([b["mean_value"] for b in bins], [b["accuracy"] for b in bins], style, label=m.upper())
    ax.set(xlabel="predicted P(correct) at the last step", ylabel="fraction correct", xlim=(0, 1), ylim=(0, 1),
           title=f"Reward-model calibration (n={report['n_test']} questions)")
    ax.legend()
    calibration = out / "calibration.png"
    fig.savefig(calibration, dpi=100, bbox_inches="tight")
    plt.close(fig)

    rows = report["refinement"]
    fig, ax = plt.subplots(figsize=(8, 4))
    methods = list(rows)
    acc = [100 * rows[m]["accuracy"] for m in methods]
    err = [[a - 100 * rows[m]["ci95_low"] for a, m in zip(acc, methods)],
           [100 * rows[m]["ci95_high"] - a for a, m in zip(acc, methods)]]
    ax.bar(range(len(methods)), acc, yerr=err, capsize=4, color="tab:blue")
    ax.set_xticks(range(len(methods)), [method_key(m, report["k"]).replace("_", "\n") for m in methods], fontsize=7)
    ax.set(ylabel=f"{report['split']} accuracy, % (95% CI)", title=f"Refinement methods (n={report['n_test']})")
    refinement = out / "refinement.png"
    fig.savefig(refinement, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return [calibration, refinement]
