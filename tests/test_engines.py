"""Tiny model folders load in transformers and vLLM; both engines sample n > 1 reproducibly."""

from __future__ import annotations

import pytest

from glore_ray.config import EngineConfig, GloreConfig
from glore_ray.core.generation import Sampling
from glore_ray.core.organism import generate
from glore_ray.core.prompts import solve_prompt
from glore_ray.models.engines import HFEngine, VLLMEngine, make_engine, vllm_available
from glore_ray.models.tiny import load_model_folder, train_tokenizer
from tests.conftest import SHARED_DATA

pytestmark = pytest.mark.cluster


PROMPTS = [solve_prompt(p.question) for p in generate(GloreConfig().data.organism, "test", 3)]
SAMPLING = Sampling(n=4, temperature=1.0, max_tokens=12, seed=7)


def test_tokenizer_has_one_token_per_digit_and_decodes_exactly() -> None:
    gsm8k_text = (SHARED_DATA / "gsm8k" / "test.jsonl").read_text(encoding="utf-8")[:20000]
    tokenizer = train_tokenizer([gsm8k_text], 400)
    ids = tokenizer("Tom has 1234 apples.\n#### 1234", add_special_tokens=False)["input_ids"]
    tokens = tokenizer.convert_ids_to_tokens(ids)
    assert [t for t in tokens if any(c.isdigit() for c in t)] == ["1", "2", "3", "4"] * 2
    line = gsm8k_text.splitlines()[0]  # unicode quotes, $, <<calculator>> annotations
    assert tokenizer.decode(tokenizer(line, add_special_tokens=False)["input_ids"]) == line
    assert tokenizer(line)["input_ids"][0] == tokenizer.bos_token_id


def test_model_folder_is_a_standard_hugging_face_folder(tiny_model_dir) -> None:
    assert {"config.json", "model.safetensors", "tokenizer.json", "generation_config.json"} <= {
        p.name for p in tiny_model_dir.iterdir()}
    model, tokenizer = load_model_folder(tiny_model_dir)
    assert model.config.hidden_size // model.config.num_attention_heads == 32  # vLLM CPU attention
    assert (model.config.eos_token_id, model.config.pad_token_id) == (tokenizer.eos_token_id, tokenizer.pad_token_id)


@pytest.fixture(scope="module")
def vllm_engine(tiny_model_dir) -> VLLMEngine:
    return VLLMEngine(str(tiny_model_dir), EngineConfig())


@pytest.fixture(scope="module")
def hf_engine(tiny_model_dir) -> HFEngine:
    return HFEngine(str(tiny_model_dir), EngineConfig())


@pytest.fixture(params=["vllm", "hf"])
def engine(request):
    return request.getfixturevalue(f"{request.param}_engine")


def texts(generations) -> list[list[str]]:
    return [[c.text for c in g.completions] for g in generations]


def test_n_seeded_samples_per_prompt(engine) -> None:
    out = engine.generate(PROMPTS, SAMPLING)
    assert [g.prompt for g in out] == PROMPTS
    assert all(len(g.completions) == 4 for g in out)
    assert all(len(set(t)) > 1 for t in texts(out))  # an untrained model at T=1 never repeats itself
    finished = [(c.finish_reason, c.n_tokens) for g in out for c in g.completions]
    assert all(n == 12 if reason == "length" else 0 < n <= 12 for reason, n in finished)


def test_samples_depend_on_seed_and_prompt_not_on_batching(engine) -> None:
    together = texts(engine.generate(PROMPTS, SAMPLING))
    alone = texts(engine.generate(PROMPTS[1:2], SAMPLING))
    assert alone[0] == together[1]
    assert texts(engine.generate(PROMPTS, SAMPLING)) == together
    other_seed = texts(engine.generate(PROMPTS, Sampling(n=4, temperature=1.0, max_tokens=12, seed=8)))
    assert other_seed != together


def test_greedy_is_deterministic(engine) -> None:
    greedy = Sampling(n=2, temperature=0.0, max_tokens=12, seed=1)
    first, second = texts(engine.generate(PROMPTS, greedy)), texts(engine.generate(PROMPTS, greedy))
    assert first == second and all(a == b for a, b in first)


def test_prompts_with_their_own_settings_share_one_call_and_get_what_they_would_alone(engine) -> None:
    greedy = Sampling(n=4, temperature=0.0, max_tokens=12, seed=1)
    mixed = engine.generate(PROMPTS * 2, [SAMPLING] * len(PROMPTS) + [greedy] * len(PROMPTS))
    assert texts(mixed) == texts(engine.generate(PROMPTS, SAMPLING)) + texts(engine.generate(PROMPTS, greedy))
    with pytest.raises(ValueError, match="1 Sampling settings for 2 prompts"):
        engine.generate(PROMPTS[:2], [SAMPLING])


def test_prompt_token_counts(engine, tiny_model_dir) -> None:
    _, tokenizer = load_model_folder(tiny_model_dir)
    out = engine.generate(PROMPTS, Sampling(n=1, max_tokens=4))
    assert [g.prompt_tokens for g in out] == [len(tokenizer(p)["input_ids"]) for p in PROMPTS]


def test_stop_strings_end_a_completion(engine) -> None:
    plain = engine.generate(PROMPTS, Sampling(n=4, max_tokens=30, seed=3))
    stop = next(c.text[5:7] for g in plain for c in g.completions if len(c.text.strip()) > 8)
    stopped = engine.generate(PROMPTS, Sampling(n=4, max_tokens=30, seed=3, stop=(stop,)))
    assert all(stop not in c.text for g in stopped for c in g.completions)
    assert any(c.finish_reason == "stop" for g in stopped for c in g.completions)


def test_auto_uses_vllm_when_it_imports_else_transformers(tiny_model_dir, monkeypatch) -> None:
    assert vllm_available()  # the `cpu` extra is installed for the suite
    monkeypatch.setattr("glore_ray.models.engines.vllm_available", lambda: False)
    assert make_engine(str(tiny_model_dir), EngineConfig(backend="auto")).name == "hf"


def test_vllm_seeded_batch_larger_than_one_scheduler_step(vllm_engine) -> None:
    # ~80 tokens a prompt: 120 prompts do not fit one 4096-token step. With chunked prefill, a
    # seeded request split across steps crashed vLLM's CPU sampler; the engine prefills whole.
    prompts = [solve_prompt(p.question) for p in generate(GloreConfig().data.organism, "train", 120)]
    out = vllm_engine.generate(prompts, Sampling(n=2, max_tokens=4, seed=5))
    assert sum(g.prompt_tokens for g in out) > 4096
    assert [len(g.completions) for g in out] == [2] * 120


def test_each_engine_reads_the_likelihood_reranker_term_as_the_policy_copy_does(engine, tiny_model_dir) -> None:
    """The policy's own engine (vLLM's prompt log-probs, or transformers over the engine's model)
    gives the reranker's likelihood term that a separate copy of the policy gives: the Serve app
    and the evaluation read it there and hold the policy once."""
    from glore_ray.models.scorers import PolicyLikelihood

    questions = ["Ava has 3 boxes of 4 apples. She eats 2. How many are left?", "Ben has 5 cards. He finds 3."]
    steps = [["3 * 4 = 12 apples.", "12 - 2 = 10 apples.", "#### 10"], [], ["5 + 3 = 8 cards.", "#### 8"]]
    questions = [questions[0], questions[1], questions[1]]
    want = PolicyLikelihood(str(tiny_model_dir)).mean_logprobs(questions, steps)
    got = engine.mean_logprobs(questions, steps)
    assert [len(v) for v in got] == [3, 0, 2]
    for g, w in zip(got, want, strict=True):
        assert g == pytest.approx(w, abs=1e-4)
