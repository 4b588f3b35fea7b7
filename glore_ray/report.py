"""The evaluation report from per-question records: reward-model accuracy and calibration, the
refinement table with 95% confidence intervals, fixed/broken shares; JSON, Markdown and PNG plots.

A record (evaluation.evaluate_batch) holds a test question's draft and samples, each with its
exact step truth (model organism) or only its correctness (GSM8K/SVAMP), both reward models' step
values, and the correctness of every refinement candidate. Plain Python; no Ray.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

METHODS = ("greedy", "best_of_k", "global", "local", "local_orm", "global_local_rerank", "oracle")
METHOD_TITLES = {
    "greedy": "greedy draft",
    "best_of_k": "ORM-reranked best of {k} samples",
    "global": "global refinement only",
    "local": "local refinement only (where: SORM)",
    "local_orm": "local refinement only (where: ORM)",
    "global_local_rerank": "global + local + ORM rerank",
    "oracle": "oracle (any of draft, global, local)",
}
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
        return [first_wrong is None or i < first_wrong for i in range(n_steps)]
    return [correct] * n_steps


def method_outcomes(record: dict) -> dict[str, bool]:
    """Whether each method's answer to one question is right."""
    c = record["correct"]
    return {"greedy": c["draft"], "best_of_k": c["best_of_k"], "global": c["global"], "local": c["local"],
            "local_orm": c["local_orm"], "global_local_rerank": c["chosen"],
            "oracle": c["draft"] or c["global"] or c["local"]}


def refinement_table(records: Sequence[dict]) -> dict:
    n = len(records)
    outcomes = [method_outcomes(r) for r in records]
    wrong = [o for o in outcomes if not o["greedy"]]
    right = [o for o in outcomes if o["greedy"]]
    table = {}
    for m in METHODS:
        hits = sum(o[m] for o in outcomes)
        lo, hi = wilson_interval(hits, n)
        table[m] = {"accuracy": hits / n if n else 0.0, "ci95_low": lo, "ci95_high": hi, "correct": hits,
                    "fixed": sum(o[m] for o in wrong) / len(wrong) if wrong else 0.0,
                    "broken": sum(not o[m] for o in right) / len(right) if right else 0.0}
    return table


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


def reward_model_metrics(records: Sequence[dict], model: str) -> dict:
    """Step-level and final-answer accuracy (value >= 0.5 means good), the final value's AUROC and
    calibration bins of it against correctness, over every scored solution (drafts and samples)."""
    steps_right = steps_n = final_right = solutions = 0
    finals: list[float] = []
    outcomes: list[bool] = []
    bins = [[0, 0.0, 0] for _ in range(CALIBRATION_BINS)]  # count, sum of values, correct
    for record in records:
        for s in record["solutions"]:
            values = s[model]
            if not values:
                continue
            truth = step_truth(s["first_wrong"], s["correct"], len(values), record["step_truth"])
            steps_right += sum((v >= 0.5) == t for v, t in zip(values, truth, strict=True))
            steps_n += len(values)
            final_right += (values[-1] >= 0.5) == s["correct"]
            solutions += 1
            finals.append(values[-1])
            outcomes.append(s["correct"])
            b = bins[min(int(values[-1] * CALIBRATION_BINS), CALIBRATION_BINS - 1)]
            b[0], b[1], b[2] = b[0] + 1, b[1] + values[-1], b[2] + s["correct"]
    return {"step_accuracy": steps_right / steps_n if steps_n else 0.0,
            "final_accuracy": final_right / solutions if solutions else 0.0,
            "final_auroc": auroc(finals, outcomes), "correct_share": sum(outcomes) / solutions if solutions else 0.0,
            "n_steps": steps_n, "n_solutions": solutions,
            "calibration": [{"bin": i / CALIBRATION_BINS, "count": c, "mean_value": s / c, "accuracy": k / c}
                            for i, (c, s, k) in enumerate(bins) if c]}


def build_report(records: Sequence[dict], k: int, settings: dict, run_name: str) -> dict:
    exact = sum(r["step_truth"] for r in records)
    samples = [s for r in records for s in r["solutions"][1:]]
    chosen: dict[str, int] = {}
    for r in records:
        chosen[r["decision"]["chosen"]] = chosen.get(r["decision"]["chosen"], 0) + 1
    return {
        "run_name": run_name, "n_test": len(records), "k": k, "settings": settings,
        "step_truth": "exact (model organism)" if exact == len(records) else "final answer only",
        "policy": {"greedy_accuracy": sum(r["correct"]["draft"] for r in records) / max(len(records), 1),
                   "sample_accuracy": sum(s["correct"] for s in samples) / max(len(samples), 1),
                   "pass_at_k": sum(any(s["correct"] for s in r["solutions"][1:]) for r in records)
                   / max(len(records), 1)},
        "reward_models": {m: reward_model_metrics(records, m) for m in ("orm", "sorm")},
        "refinement": refinement_table(records),
        "ensemble": {"refined": sum(r["decision"]["refined"] for r in records),
                     "local_located": sum(r["decision"]["first_bad_step"] is not None for r in records),
                     "chosen": chosen},
    }


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def tables(report: dict) -> str:
    """The report's two tables, in Markdown."""
    k = report["k"]
    lines = [f"Reward models on {report['n_test']} test questions' drafts and samples "
             f"(step truth: {report['step_truth']})", "",
             "| model | step accuracy | final-answer accuracy | final AUROC | steps | solutions (correct) |",
             "|---|---|---|---|---|---|"]
    for m in ("orm", "sorm"):
        r = report["reward_models"][m]
        roc = "–" if r["final_auroc"] is None else f"{r['final_auroc']:.3f}"
        lines.append(f"| {m.upper()} | {_pct(r['step_accuracy'])} | {_pct(r['final_accuracy'])} | {roc} "
                     f"| {r['n_steps']} | {r['n_solutions']} ({_pct(r['correct_share'])}%) |")
    lines += ["", f"Refinement on {report['n_test']} test questions (accuracy %, 95% Wilson interval; fixed = "
              "share of wrong drafts made right, broken = share of right drafts made wrong)", "",
              "| method | accuracy | 95% CI | fixed | broken |", "|---|---|---|---|---|"]
    for m in METHODS:
        r = report["refinement"][m]
        lines.append(f"| {METHOD_TITLES[m].format(k=k)} | {_pct(r['accuracy'])} | {_pct(r['ci95_low'])}–"
                     f"{_pct(r['ci95_high'])} | {_pct(r['fixed'])} | {_pct(r['broken'])} |")
    return "\n".join(lines)


def report_json(report: dict) -> dict:
    """The report with `best_of_<k>` named by its k, the key users read."""
    out = json.loads(json.dumps(report))
    out["refinement"][f"best_of_{report['k']}"] = out["refinement"].pop("best_of_k")
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
    for m, style in (("orm", "o-"), ("sorm", "s-")):
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
    acc = [100 * rows[m]["accuracy"] for m in METHODS]
    err = [[a - 100 * rows[m]["ci95_low"] for a, m in zip(acc, METHODS)],
           [100 * rows[m]["ci95_high"] - a for a, m in zip(acc, METHODS)]]
    ax.bar(range(len(METHODS)), acc, yerr=err, capsize=4, color="tab:blue")
    ax.set_xticks(range(len(METHODS)), [m.replace("_", "\n") for m in METHODS], fontsize=8)
    ax.set(ylabel="test accuracy, % (95% CI)", title=f"Refinement methods (n={report['n_test']})")
    refinement = out / "refinement.png"
    fig.savefig(refinement, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return [calibration, refinement]
