"""The refinement ensemble's when/where/how/rerank decisions, with scripted models standing in for
the policy, refiners and reward models (each case states what every model says), plus the HF
step scorer on a real tiny token-classification folder."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest

from glore_ray.config.ensemble import EnsembleSettings
from glore_ray.core.ensemble import RefinementEnsemble, iterate, rerank
from glore_ray.core.generation import Completion, Generation, Sampling
from glore_ray.core.prompts import BAD_MARK

Q1, Q2 = "Ava has 3 boxes of 4 apples. She eats 2. How many are left?", "Ben has 5 cards. He finds 3. How many?"
DRAFT1 = "3 * 4 = 12 apples.\n12 - 3 = 9 apples.\n#### 9"
DRAFT2 = "5 + 3 = 8 cards.\n#### 8"


class ScriptedEngine:
    name = "scripted"

    def __init__(self, reply: Callable[[str], str]):
        self.reply, self.calls, self.samplings = reply, [], []

    def generate(self, prompts: Sequence[str], sampling: Sampling) -> list[Generation]:
        self.calls.append(list(prompts))
        self.samplings.append(sampling)
        return [Generation(p, 5, [Completion(self.reply(p), 5, "stop")]) for p in prompts]


class ScriptedScorer:
    def __init__(self, values: Callable[[str, list[str]], list[float]]):
        self.values = values

    def score(self, questions, steps):
        return [self.values(q, list(s)) for q, s in zip(questions, steps)]


def orm_values(question: str, steps: list[str]) -> list[float]:
    """The ORM likes the answer 10, dislikes 9, is lukewarm otherwise: it reads the answer line."""
    last = steps[-1] if steps else ""
    score = 0.9 if last == "#### 10" else 0.1 if last == "#### 9" else 0.6
    return [0.5] * (len(steps) - 1) + [score]


def sorm_values(question: str, steps: list[str]) -> list[float]:
    return [0.2 if "12 - 3" in s else 0.9 for s in steps]


def ensemble(settings: EnsembleSettings = EnsembleSettings()) -> RefinementEnsemble:
    policy = ScriptedEngine(lambda p: DRAFT1 if "apples" in p else DRAFT2)
    global_refiner = ScriptedEngine(lambda p: "3 * 4 = 12 apples.\n12 - 2 = 11 apples.\n#### 11")
    local_refiner = ScriptedEngine(lambda p: "12 - 2 = 10 apples.\n#### 10")
    return RefinementEnsemble(policy, global_refiner, local_refiner, ScriptedScorer(orm_values),
                              ScriptedScorer(sorm_values), settings)


def test_a_low_scoring_draft_is_refined_where_the_sorm_drops_and_reranked() -> None:
    e = ensemble()
    first, second = e.solve([Q1, Q2])
    assert first.refined and first.first_bad_step == 1 and first.step_values == [0.9, 0.2, 0.9]
    assert first.local == "3 * 4 = 12 apples.\n12 - 2 = 10 apples.\n#### 10"
    assert first.orm_scores == {"draft": 0.1, "global": 0.6, "local": 0.9}
    assert first.chosen == "local" and first.answer == "10"
    (local_prompt,) = e.local_refiner.calls[0]
    assert f"3 * 4 = 12 apples.\n{BAD_MARK} 12 - 3 = 9 apples." in local_prompt
    # The second draft scores 0.6 >= 0.5: kept as it is, no refiner sees it.
    assert not second.refined and second.chosen == "draft" and second.answer == "8"
    assert second.global_ is None and second.local is None
    assert [len(c) for c in e.policy.calls] == [2] and [len(c) for c in e.global_refiner.calls] == [1]
    # Every model decodes greedily by default (the paper's refiners).
    assert all(s.temperature == 0 for m in (e.policy, e.global_refiner, e.local_refiner) for s in m.samplings)


def test_each_decision_counts_the_tokens_its_generations_cost_and_why_each_candidate_ended() -> None:
    """Every generator call returns 5 prompt and 5 completion tokens per prompt (ScriptedEngine): a
    refined question cost the draft, the global and the local rewrite (15 + 15); a kept one the draft
    alone; a caller's draft costs nothing and has no finish reason. Further samples are a second
    call per refiner, so their prompt counts again."""
    first, second = ensemble().solve([Q1, Q2])
    assert (first.usage.prompt_tokens, first.usage.completion_tokens) == (15, 15)
    assert (second.usage.prompt_tokens, second.usage.completion_tokens) == (5, 5)
    assert first.finish_reasons == {"draft": "stop", "global": "stop", "local": "stop"}
    (given,) = ensemble().solve([Q1], drafts=[DRAFT1])
    assert (given.usage.prompt_tokens, given.usage.completion_tokens) == (10, 10) and "draft" not in given.finish_reasons
    (sampled,) = ensemble(EnsembleSettings(refine_samples=2)).solve([Q1])
    assert (sampled.usage.prompt_tokens, sampled.usage.completion_tokens) == (25, 25)
    assert set(sampled.finish_reasons) == {"draft", "global", "local", "global_2", "local_2"}


def test_always_refine_still_keeps_a_draft_the_orm_prefers() -> None:
    e = ensemble(EnsembleSettings(always_refine=True))
    _, second = e.solve([Q1, Q2])
    assert second.refined and second.global_ is not None
    assert second.first_bad_step is None and second.local is None  # no step below the threshold
    assert second.orm_scores == {"draft": 0.6, "global": 0.6} and second.chosen == "draft"  # ties keep the draft


def test_where_can_come_from_the_orm_and_drafts_can_be_given() -> None:
    # The ORM's step values on its own threshold (the SORM's would flag none of them).
    e = ensemble(EnsembleSettings(where="orm", orm_step_threshold=0.55, step_threshold=0.05))
    (decision,) = e.solve([Q1], drafts=[DRAFT1])
    assert e.policy.calls == []
    assert decision.step_values == [0.5, 0.5, 0.1] and decision.first_bad_step == 0
    assert decision.local.startswith("12 - 2 = 10") and decision.to_row()["global"] == decision.global_


def test_the_answer_line_is_scored_and_never_a_place_to_refine_from() -> None:
    """Two solutions with the same steps and different answers: the ORM tells them apart by the
    answer line. A low value there alone marks no step for the local refiner."""
    e = ensemble(EnsembleSettings(always_refine=True))
    e.global_refiner = ScriptedEngine(lambda p: "3 * 4 = 12 apples.\n12 - 3 = 9 apples.\n#### 10")
    e.sorm = ScriptedScorer(lambda q, steps: [0.9] * (len(steps) - 1) + [0.1])
    (decision,) = e.solve([Q1])
    assert decision.orm_scores == {"draft": 0.1, "global": 0.9} and decision.chosen == "global"
    assert decision.step_values == [0.9, 0.9, 0.1] and decision.first_bad_step is None and decision.local is None


def test_hf_step_scorer_scores_every_step(tiny_model_dir, tmp_path) -> None:
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    from glore_ray.models.scorers import HFStepScorer

    model = AutoModelForTokenClassification.from_pretrained(tiny_model_dir, num_labels=1)
    model.save_pretrained(tmp_path / "orm")
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(tmp_path / "orm")
    scorer = HFStepScorer(str(tmp_path / "orm"))
    values = scorer.score([Q1, Q2, Q2], [["3 * 4 = 12 apples.", "12 - 3 = 9 apples."], [], ["5 + 3 = 8 cards."]])
    assert [len(v) for v in values] == [2, 0, 1] and all(0 < x < 1 for v in values for x in v)
    # Batched with padding or alone: the same values.
    assert scorer.score([Q2], [["5 + 3 = 8 cards."]])[0] == pytest.approx(values[2], abs=1e-5)


def test_policy_likelihood_is_each_steps_running_mean_token_logprob(tiny_model_dir) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from glore_ray.core.prompts import solve_prompt
    from glore_ray.models.scorers import PolicyLikelihood

    steps = ["3 * 4 = 12 apples.", "12 - 3 = 9 apples.", "#### 9"]
    values = PolicyLikelihood(str(tiny_model_dir)).mean_logprobs([Q2, Q1, Q1], [["5 + 3 = 8 cards."], steps, []])
    assert [len(v) for v in values] == [1, 3, 0]
    # By hand, alone: the log-probability of every token after the prompt, averaged up to each newline.
    tokenizer, model = AutoTokenizer.from_pretrained(tiny_model_dir), AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    prompt = tokenizer(solve_prompt(Q1))["input_ids"]
    pieces = [tokenizer(s + "\n", add_special_tokens=False)["input_ids"] for s in steps]
    ids = torch.tensor([prompt + [t for piece in pieces for t in piece]])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(input_ids=ids).logits[0, :-1], -1).gather(1, ids[0, 1:, None])[:, 0]
    solution = logprobs[len(prompt) - 1:].tolist()
    ends = [sum(len(p) for p in pieces[:i + 1]) for i in range(len(pieces))]
    assert values[1] == pytest.approx([sum(solution[:e]) / e for e in ends], abs=1e-4)


def test_a_reranker_folder_scores_as_the_orm_and_the_likelihood_combined_and_serves_after_a_move(
        tiny_model_dir, tmp_path) -> None:
    import json
    import math
    import shutil

    from transformers import AutoModelForTokenClassification, AutoTokenizer

    from glore_ray.models.scorers import (
        RERANKER_FILE,
        HFStepScorer,
        PolicyLikelihood,
        load_scorer,
        read_reranker_spec,
        reranker_weights,
        write_reranker_spec,
    )

    run = tmp_path / "run"
    AutoModelForTokenClassification.from_pretrained(tiny_model_dir, num_labels=1).save_pretrained(run / "orm")
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(run / "orm")
    shutil.copytree(tiny_model_dir, run / "policy")
    questions, steps = [Q1, Q2], [DRAFT1.splitlines(), ["5 + 3 = 8 cards.", "#### 8"]]
    orm = HFStepScorer(str(run / "orm")).score(questions, steps)
    likelihood = PolicyLikelihood(str(run / "policy")).mean_logprobs(questions, steps)

    def reranker(folder=run / "reranker") -> list[float]:
        values = load_scorer(str(folder)).score(questions, steps)
        assert [len(v) for v in values] == [3, 2]
        return [x for v in values for x in v]

    write_reranker_spec(str(run / "reranker"), str(run / "orm"), str(run / "policy"), [1.0, 0.0, 0.0])
    assert reranker() == pytest.approx([x for v in orm for x in v], abs=1e-5)  # the ORM alone
    write_reranker_spec(str(run / "reranker"), str(run / "orm"), str(run / "policy"), [0.0, 2.0, 0.5])
    sigmoid = [1 / (1 + math.exp(-2 * lp - 0.5)) for v in likelihood for lp in v]
    assert reranker() == pytest.approx(sigmoid, abs=1e-5)  # the likelihood alone

    # A run directory moved (or copied to another machine's path) serves from where it now is.
    moved = shutil.move(run, tmp_path / "moved")
    assert read_reranker_spec(f"{moved}/reranker")[:2] == (f"{moved}/reranker/../orm", f"{moved}/reranker/../policy")
    assert reranker(f"{moved}/reranker") == pytest.approx(sigmoid, abs=1e-5)
    # Served over the ORM and the policy already loaded, its weights only with the folders it was fitted over.
    assert reranker_weights(f"{moved}/reranker", f"{moved}/orm", f"{moved}/policy/") == [0.0, 2.0, 0.5]
    with pytest.raises(ValueError, match=f"fitted over the policy {moved}/reranker/../policy, but the policy "
                                         f"served is {moved}/orm"):
        reranker_weights(f"{moved}/reranker", f"{moved}/orm", f"{moved}/orm")

    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / RERANKER_FILE).write_text(json.dumps({"orm": "orm"}))
    with pytest.raises(ValueError, match=f"{RERANKER_FILE}: not a reranker spec .*KeyError"):
        load_scorer(str(tmp_path / "bad"))
    assert isinstance(load_scorer(f"{moved}/orm"), HFStepScorer)


def test_fit_logistic_recovers_the_direction_and_scale_of_a_logistic_model() -> None:
    import random

    from glore_ray.models.scorers import fit_logistic

    rng = random.Random(0)
    x = [(rng.gauss(0, 1), rng.gauss(5, 2)) for _ in range(4000)]
    # The truth: P(y) = sigmoid(2 * a - 0 * b + 1); b is noise.
    y = [rng.random() < 1 / (1 + 2.718281828 ** -(2 * a + 1)) for a, _ in x]
    w_a, w_b, bias = fit_logistic(x, y)
    assert w_a == pytest.approx(2, abs=0.3) and abs(w_b) < 0.1 and bias == pytest.approx(1, abs=0.3)


@pytest.mark.parametrize("margin, chosen", [(4e-6, "draft"), (-4e-6, "draft"), (5e-4, "global")])
def test_scores_within_float_noise_are_a_tie_the_draft_wins(margin, chosen) -> None:
    """The same text scores a little differently in different batches; that must not flip the answer."""
    def orm(question: str, steps: list[str]) -> list[float]:
        return [0.5 + margin if "11 apples" in " ".join(steps) else 0.5]

    e = ensemble(EnsembleSettings(always_refine=True))
    e.orm = ScriptedScorer(orm)
    (decision,) = e.solve([Q1])
    assert decision.chosen == chosen


@pytest.mark.parametrize("global_offset, local_offset, chosen", [
    (0.0, 0.0, "local"),      # raw scores: local 0.6 > global 0.55 > draft 0.5
    (-1.0, -1.0, "draft"),    # both refinements pulled below the draft (logit 0)
    (0.5, -1.0, "global"),    # logit(0.55) + 0.5 = 0.70 > logit(0.6) - 1 = -0.59
])
def test_per_source_offsets_shift_the_rerank_in_logit_space(global_offset, local_offset, chosen) -> None:
    settings = EnsembleSettings(global_offset=global_offset, local_offset=local_offset)
    assert rerank({"draft": 0.5, "global": 0.55, "local": 0.6}, settings) == chosen
    # An offset never changes which candidate wins among equal raw scores with no offset: the draft.
    assert rerank({"draft": 0.5, "global": 0.5}, EnsembleSettings(local_offset=3.0)) == "draft"


def test_iterated_refinement_refines_again_only_what_the_orm_still_doubts() -> None:
    from dataclasses import replace

    e = replace(ensemble(EnsembleSettings(always_refine=True, orm_threshold=0.7)),
                sorm=ScriptedScorer(lambda q, steps: [0.9] * len(steps)))  # no local rewrites
    # The global refiner turns an answer of 11 into 10 (the ORM: 0.9) and anything else into 11 (0.6).
    e.global_refiner = ScriptedEngine(lambda p: "3 * 4 = 12 apples.\n12 - 2 = 10 apples.\n#### 10" if "#### 11" in p
                                      else "3 * 4 = 12 apples.\n12 - 1 = 11 apples.\n#### 11")
    rounds = iterate(e, [Q1, Q2], e.solve([Q1, Q2]), max_rounds=3, temperature=0.7, seed=5)
    assert [[d.candidate(d.chosen).splitlines()[-1] for d in decided] for decided in rounds] == [
        ["#### 11", "#### 8"],   # round 1: 11 (0.6) beats the draft's 9 (0.1); the draft 8 ties 11 (0.6) and stays
        ["#### 10", "#### 8"],   # both below 0.7: refined again; 11 becomes 10 (0.9)
        ["#### 10", "#### 8"]]   # 10 scores 0.9: left alone; 8 is refined a third time, and stays
    assert [len(c) for c in e.global_refiner.calls] == [2, 2, 1]
    # Round 1 decodes greedily; the later rounds sample, each with its own seed.
    assert [(s.temperature, s.seed) for s in e.global_refiner.samplings] == [(0.0, 0), (0.7, 7), (0.7, 8)]
    ((once,),) = iterate(e, [Q1], e.solve([Q1]), max_rounds=1, temperature=0.7, seed=5)
    assert once.candidate(once.chosen) == e.solve([Q1])[0].global_
    # A later round's decision refined the previous round's answer; an answer left alone keeps its decision.
    assert rounds[1][0].draft == rounds[0][0].candidate(rounds[0][0].chosen) and rounds[2][0] is rounds[1][0]


def test_the_within_question_fit_ranks_a_questions_solutions_where_the_pooled_fit_does_not() -> None:
    """Feature a says how easy the question is (the same for all its solutions, so useless for
    ranking them), feature b which of its solutions is right, but only weakly: a pooled regression
    leans on a; the within-question fit leans on b and ignores a."""
    import random

    from glore_ray.core.stats import within_question_auroc
    from glore_ray.models.scorers import fit_logistic, fit_within_question

    rng = random.Random(0)
    features, questions, labels = [], [], []
    for q in range(400):
        ease = rng.gauss(0, 2)
        for _ in range(4):
            right = rng.random() < 1 / (1 + 2.718281828 ** -ease)
            features.append((ease + rng.gauss(0, 1), (1.0 if right else 0.0) + rng.gauss(0, 1.5)))
            questions.append(str(q))
            labels.append(right)

    def ranking(weights: list[float]) -> float:
        groups: dict[str, list] = {}
        for f, q, ok in zip(features, questions, labels):
            groups.setdefault(q, []).append((weights[0] * f[0] + weights[1] * f[1], ok))
        return within_question_auroc(groups.values())[0]

    pooled, within = fit_logistic(features, labels), fit_within_question(features, questions, labels)
    assert abs(within[0]) < 0.25 * abs(within[1]) and pooled[0] > pooled[1] > 0
    assert ranking(within) > ranking(pooled) + 0.05
    # Still a calibrated probability: the mean predicted P(correct) is the share correct.
    predicted = [1 / (1 + 2.718281828 ** -(within[0] * a + within[1] * b + within[2])) for a, b in features]
    assert sum(predicted) / len(predicted) == pytest.approx(sum(labels) / len(labels), abs=0.03)


class SamplingEngine:
    """Greedy decoding says the first reply; a call for n samples says the next n."""

    name = "sampling"

    def __init__(self, replies: list[str]):
        self.replies, self.samplings = replies, []

    def generate(self, prompts: Sequence[str], sampling: Sampling) -> list[Generation]:
        self.samplings.append(sampling)
        start = 0 if sampling.temperature == 0 else 1
        return [Generation(p, 5, [Completion(self.replies[start + j], 5, "stop") for j in range(sampling.n)])
                for p in prompts]


def test_refine_samples_makes_every_further_rewrite_a_candidate_of_the_rerank() -> None:
    # The ORM scores an answer of 10 at 0.9, 9 at 0.1, anything else 0.6 (orm_values).
    global_refiner = SamplingEngine(["12 - 1 = 11 apples.\n#### 11", "12 - 3 = 9 apples.\n#### 9",
                                     "12 - 2 = 10 apples.\n#### 10"])
    local_refiner = SamplingEngine(["12 - 1 = 11 apples.\n#### 11", "12 - 2 = 10 apples.\n#### 10",
                                    "12 - 4 = 8 apples.\n#### 8"])
    settings = EnsembleSettings(refine_samples=3, sample_temperature=0.7, seed=5)
    e = RefinementEnsemble(ScriptedEngine(lambda p: DRAFT1), global_refiner, local_refiner,
                           ScriptedScorer(orm_values), ScriptedScorer(sorm_values), settings)
    (d,) = e.solve([Q1])
    assert list(d.refinements()) == ["global", "global_2", "global_3", "local", "local_2", "local_3"]
    assert d.global_.endswith("#### 11") and d.candidate("global_3").endswith("#### 10")
    assert d.candidate("local_2") == "3 * 4 = 12 apples.\n12 - 2 = 10 apples.\n#### 10"  # the draft's prefix kept
    assert d.orm_scores == {"draft": 0.1, "global": 0.6, "global_2": 0.1, "global_3": 0.9,
                            "local": 0.6, "local_2": 0.9, "local_3": 0.6}
    # A tie at 0.9: the global refiner's before the local one's, as the draft before both.
    assert d.chosen == "global_3" and d.answer == "10"
    # The first rewrite greedy, the others in one call at the sample temperature, seeded apart.
    for refiner in (global_refiner, local_refiner):
        first, more = refiner.samplings
        assert (first.n, first.temperature) == (1, 0.0)
        assert (more.n, more.temperature, more.seed) == (2, 0.7, 6)
    # A source's offset moves all of its samples.
    assert rerank(d.orm_scores, EnsembleSettings(local_offset=1.0)) == "local_2"
