"""The evaluation report as files: report.json (the best-of rows named by their k), report.md (its
tables) and the PNG plots."""

from __future__ import annotations

import json
from pathlib import Path

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
"""The step-reward models a record may hold: the PRM (trained on exact step labels) only on the
model organism, the reranker (the ORM with the policy's likelihood) only with `reranker.likelihood`."""


RANKERS = {"orm": "ORM", "reranker": "ORM+likelihood"}
"""`settings.ranked_by` (what ranked the best-of rows and the ensemble's candidates) as the tables name it."""


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
