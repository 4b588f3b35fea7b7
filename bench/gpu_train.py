"""The project's own training loop and objective on one accelerator: a ~1B-parameter Llama built
from a config (nothing downloaded), the policy objective on model-organism rows, bf16 on a GPU.
Reports tokens/s and MFU: model FLOPs per token (6 x parameters, plus attention's 12 x layers x
hidden x sequence length, as PaLM counts them) times tokens/s, over the GPU's dense bf16 peak.

    python bench/gpu_train.py                      # on a GPU: writes bench/results/gpu_train.json
    python bench/gpu_train.py --tiny --steps 3     # the CPU smoke run (a ~1M model): gpu_train_cpu.json

Needs torch and transformers only (no Ray, no DeepSpeed): the GPU machines lent for a session
have nothing else. The loop is `training.loop.train_steps` under `training.strategy.TorchStrategy`
(AdamW, clipping) with the model's weights in bf16, as DeepSpeed's bf16 mode computes.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.results_table import publish  # noqa: E402

ONE_B = {"hidden_size": 2048, "num_layers": 16, "num_heads": 16, "intermediate_size": 5632}
"""TinyLlama-1.1B's shape (its vocabulary is the project's tokenizer's)."""
TINY = {"hidden_size": 128, "num_layers": 4, "num_heads": 4, "intermediate_size": 512}
BF16_PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 125.0}
"""Dense bf16 peaks (vendor data sheets; H100/H200 SXM)."""


def peak_tflops(device_name: str) -> float | None:
    return next((v for k, v in BF16_PEAK_TFLOPS.items() if k in device_name), None)


def flops_per_token(params: int, layers: int, hidden: int, seq_len: float) -> float:
    return 6 * params + 12 * layers * hidden * seq_len


def batches(examples: list, pad_id: int, batch_size: int):
    """Collated batches of `examples`, cycling over them."""
    from glore_ray.models.encoding import collate

    for start in itertools.cycle(range(0, len(examples) - batch_size + 1, batch_size)):
        yield collate(examples[start:start + batch_size], pad_id)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="the ~1M model of the embedded default (CPU smoke run)")
    parser.add_argument("--steps", type=int, default=30, help="measured optimizer steps (after --warmup)")
    parser.add_argument("--warmup", type=int, default=5, help="steps not measured (allocator, kernels)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--peak-tflops", type=float, help="the device's dense bf16 peak (default: by its name)")
    parser.add_argument("--name", help="results file name (default: gpu_train, or gpu_train_cpu without a GPU)")
    parser.add_argument("--out", help="write the results to this JSON file instead of bench/results/")
    args = parser.parse_args(argv)

    import torch

    from glore_ray.config import ModelConfig, OrganismConfig, TrainConfig
    from glore_ray.core.organism import generate
    from glore_ray.models.tiny import build_model, train_tokenizer
    from glore_ray.training.loop import train_steps
    from glore_ray.training.objectives import objective
    from glore_ray.training.strategy import TorchStrategy

    on_gpu = torch.cuda.is_available()
    device = torch.device("cuda" if on_gpu else "cpu")
    problems = list(generate(OrganismConfig(), "train", 4 * args.batch_size))
    rows = [{"id": p.id, "question": p.question, "solution": p.solution()} for p in problems]
    tokenizer = train_tokenizer([r["question"] + "\n" + r["solution"] for r in rows], vocab_size=512)
    shape = TINY if args.tiny else ONE_B
    model = build_model(ModelConfig(**shape, max_position_embeddings=args.max_length), tokenizer)
    model = model.to(device, dtype=torch.bfloat16 if on_gpu else torch.float32)
    params = sum(p.numel() for p in model.parameters())
    policy = objective("policy")
    examples = [policy.encode(tokenizer, row, args.max_length) for row in rows]
    data = batches(examples, tokenizer.pad_token_id, args.batch_size)
    total = args.warmup + args.steps
    cfg = TrainConfig(steps=total, batch_size=args.batch_size, warmup_steps=1, log_every=total)
    strategy = TorchStrategy(model, cfg)

    # The warm-up steps, then the measured ones: train_steps times its own call (each step's
    # loss.item() waits for the device), and logs once, at the last step.
    train_steps(model, data, replace(cfg, steps=args.warmup, warmup_steps=0), policy.loss, strategy.step)
    logs = []
    t0 = time.perf_counter()
    train_steps(model, data, cfg, policy.loss, strategy.step, on_log=logs.append, start_step=args.warmup)
    wall, tokens_per_s = time.perf_counter() - t0, logs[-1].tokens_per_s
    seq_len = sum(len(e.input_ids) for e in examples) / len(examples)
    config = model.config
    model_flops = flops_per_token(params, config.num_hidden_layers, config.hidden_size, seq_len) * tokens_per_s
    name = torch.cuda.get_device_name() if on_gpu else "cpu"
    peak = args.peak_tflops or (peak_tflops(name) if on_gpu else None)
    results = {"device": name, "dtype": "bfloat16" if on_gpu else "float32", "params": params,
               "layers": config.num_hidden_layers, "hidden_size": config.hidden_size,
               "batch_size": args.batch_size, "mean_seq_len": round(seq_len, 1), "measured_steps": args.steps,
               "wall_s": round(wall, 2), "tokens_per_s": round(tokens_per_s, 1),
               "model_tflops_per_s": round(model_flops / 1e12, 3), "peak_tflops": peak,
               "mfu": round(model_flops / (peak * 1e12), 4) if peak else None,
               "final_loss": round(logs[-1].loss, 4)}
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    else:
        publish(args.name or ("gpu_train" if on_gpu else "gpu_train_cpu"), results)
    return results


if __name__ == "__main__":
    main()
