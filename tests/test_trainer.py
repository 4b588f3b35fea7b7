"""Ray Train with 2 CPU workers: both model heads (causal LM, step value) under DDP, ZeRO-2 and
ZeRO-3, and every objective at least once (5 runs at ~20 s, most of it Ray Train's worker-group
start; test_pipeline trains policy, ORM and SORM again on one worker); the exported folder loads
and runs. A lost worker resuming from its checkpoint: test_faults (ZeRO-2, its node removed) and
the miniature job (DDP, the job stopped and submitted again)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from glore_ray.config import EngineConfig, TrainConfig
from glore_ray.core.generation import Sampling
from glore_ray.core.prompts import solve_prompt
from glore_ray.models.encoding import encode_step_example, step_scores
from glore_ray.models.engines import make_engine
from glore_ray.testing.training_rows import rows
from glore_ray.training.objectives import OBJECTIVES, encode_row
from glore_ray.training.objectives import objective as objective_spec
from glore_ray.training.ray_train import fit

pytestmark = pytest.mark.cluster

# Two workers at half a CPU each leave a CPU for Ray Data's read tasks (a full pool hangs them).
TWO_WORKERS = TrainConfig(steps=4, batch_size=16, lr=3e-3, warmup_steps=1, log_every=1, checkpoint_every=2,
                          num_workers=2, cpus_per_worker=0.5, torch_threads=1, max_failures=0)


def write_rows(objective: str, n: int, path: Path) -> str:
    pq.write_table(pa.Table.from_pylist(rows(objective, n)), path)
    return str(path)


def write_fixed_batch(objective: str, path: Path) -> str:
    """The same 8 rows, repeated so that each worker's shard holds 4 copies of them: every step sees
    one fixed batch (with the shuffle off), and the run stays inside one epoch (each epoch
    re-executes the Ray Dataset, ~2.5 s here)."""
    pq.write_table(pa.Table.from_pylist(rows(objective, 8) * 8), path)
    return str(path)


# The strategy changes how a model is wrapped, saved and exported, which depends on its head, not on
# the objective's rows: every strategy for each head (causal LM, step value), every objective once.
# The step head under DDP (the default) trains in the miniature pipeline's ORM stage, whose model the
# evaluation and Serve then load (test_pipeline, test_serve).
MATRIX = [("global_refiner", "ddp"), ("local_refiner", "zero2"), ("policy", "zero3"), ("orm", "zero2"),
          ("sorm", "zero3")]
assert {objective for objective, _ in MATRIX} == set(OBJECTIVES)


@pytest.mark.parametrize("objective, strategy", MATRIX)
def test_each_objective_trains_and_exports(objective, strategy, ray_module, tiny_model_dir, tmp_path) -> None:
    data = write_fixed_batch(objective, tmp_path / "rows.parquet")
    cfg = replace(TWO_WORKERS, strategy=strategy, shuffle_buffer_rows=0)
    meta = fit(objective, cfg, data, str(tiny_model_dir), str(tmp_path / "out"), f"{objective}-{strategy}")
    assert meta["step"] == 4 and meta["resumed_from"] is None
    assert meta["loss"] < meta["first_loss"]

    from transformers import AutoModelForCausalLM, AutoModelForTokenClassification, AutoTokenizer

    if objective_spec(objective).step_reward:  # scores every step of a training row
        tokenizer = AutoTokenizer.from_pretrained(tmp_path / "out")
        model = AutoModelForTokenClassification.from_pretrained(tmp_path / "out")
        row = rows(objective, 1)[0]
        example = encode_step_example(tokenizer, row["prompt"], row["completions"], row["labels"], 512)
        labels = torch.tensor([example.labels])
        scores = step_scores(model(input_ids=torch.tensor([example.input_ids])).logits, labels)[0]
        assert len(scores) == len(row["completions"]) and all(0 < s < 1 for s in scores)
    else:  # generates with the foundation's engines; vLLM (~30 s to load here) reads ZeRO-3's gathered weights once
        backend = "vllm" if (objective, strategy) == ("policy", "zero3") else "hf"
        engine = make_engine(str(tmp_path / "out"), EngineConfig(backend=backend))
        generation = engine.generate([solve_prompt("Ava has 3 apples.")], Sampling(temperature=0, max_tokens=8))[0]
        assert generation.completions[0].n_tokens > 0
        del engine
        model = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    trained = model.state_dict()["model.embed_tokens.weight"]
    initial = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()["model.embed_tokens.weight"]
    assert trained.dtype == torch.float32 and not torch.equal(trained, initial)


def test_a_bad_row_fails_the_cli_run_naming_it(ray_module, tiny_model_dir, tmp_path) -> None:
    """`glore train`'s wiring (verb, objective, --set into the objective's section) up to the
    worker that finds the bad row."""
    from glore_ray.cli import main

    good = rows("sorm", 15)
    bad = {**good[0], "id": "sorm-row-7", "labels": [True]}
    pq.write_table(pa.Table.from_pylist(good + [bad]), tmp_path / "rows.parquet")
    args = ["train", "sorm", "--data", str(tmp_path / "rows.parquet"), "--model", str(tiny_model_dir),
            "--out", str(tmp_path / "out")]
    for override in ("steps=2", "warmup_steps=0", "batch_size=8", "num_workers=2", "cpus_per_worker=0.5",
                     "torch_threads=1", "max_failures=0"):
        args += ["--set", f"sorm.{override}"]
    with pytest.raises(Exception, match=r"row sorm-row-7: 1 labels for \d+ steps in 'completions'"):
        main(args)
    assert not (tmp_path / "out" / "model").exists() and not (tmp_path / "out" / "manifest.json").exists()


class CountingShard:
    """A real Ray Data iterator that counts how often it is read (each read re-executes the dataset)."""

    def __init__(self, iterator):
        self.iterator, self.reads = iterator, 0

    def iter_batches(self, **kwargs):
        self.reads += 1
        return self.iterator.iter_batches(**kwargs)


@pytest.mark.parametrize("replay_rows, reads", [(4096, 1), (0, 3)])
def test_every_epoch_holds_every_row_in_a_new_order(replay_rows, reads, ray_module, tiny_model_dir) -> None:
    """Streamed or replayed from memory, each epoch is a new permutation of the shard (rows come in
    file order, a question's rows together), and the same seed gives the same permutations."""
    import itertools

    import ray.data
    from transformers import AutoTokenizer

    from glore_ray.training.ray_train import row_batches

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    cfg = replace(TWO_WORKERS, num_workers=1, batch_size=8, replay_rows=replay_rows)
    file_order = [tuple(encode_row("orm", tokenizer, r, 512).input_ids) for r in rows("orm", 24)]

    def epochs(seed: int) -> tuple[list[list[tuple]], int]:
        shard = CountingShard(ray.data.from_items(rows("orm", 24)).iterator())
        batches = itertools.islice(row_batches(shard, "orm", tokenizer, replace(cfg, seed=seed)), 9)
        order = [tuple(ids[mask.bool()].tolist()) for b in batches for ids, mask in zip(b["input_ids"],
                                                                                        b["attention_mask"])]
        return [order[24 * e:24 * e + 24] for e in range(3)], shard.reads

    orders, n_reads = epochs(seed=0)
    assert n_reads == reads
    assert all(sorted(order) == sorted(file_order) for order in orders)
    assert len({tuple(order) for order in [file_order, *orders]}) == 4
    assert epochs(seed=0)[0] == orders and epochs(seed=1)[0] != orders


def test_the_gpu_benchmark_runs_its_training_loop_on_cpu_with_the_tiny_model(tmp_path) -> None:
    """bench/gpu_train.py's own smoke run: the project's loop and policy objective, a few steps of
    the tiny Llama on CPU, tokens/s counted and no MFU without a GPU's peak (the GPU run is made
    by hand on a lent machine, never in CI)."""
    import subprocess
    import sys

    from tests.conftest import REPO

    out = tmp_path / "gpu_train.json"
    subprocess.run([sys.executable, str(REPO / "bench" / "gpu_train.py"), "--tiny", "--steps", "3", "--warmup", "1",
                    "--batch-size", "8", "--out", str(out)], check=True, capture_output=True, timeout=300)
    results = json.loads(out.read_text())
    assert results["device"] == "cpu" and results["measured_steps"] == 3 and results["mfu"] is None
    assert results["params"] > 1_000_000 and results["tokens_per_s"] > 0 and 0 < results["final_loss"] < 10
    assert results["model_tflops_per_s"] >= 0 and 50 < results["mean_seq_len"] < 512


def test_the_implicit_prm_trains_against_its_reference_and_scores_from_its_folder(
        ray_module, tiny_model_dir, tmp_path) -> None:
    """The implicit head (reward_model.head=implicit): two DDP workers, each with a frozen copy of
    the initial model as pi_ref; the folder names that reference relative to itself, and
    `load_scorer` reads it as an implicit PRM."""
    from glore_ray.models.scorers import IMPLICIT_FILE, ImplicitPRMScorer, load_scorer, write_implicit_spec

    spec = objective_spec("orm").with_head("implicit", 0.5)
    data = write_fixed_batch("orm", tmp_path / "rows.parquet")
    out = tmp_path / "run" / "orm" / "model"
    meta = fit(spec, replace(TWO_WORKERS, shuffle_buffer_rows=0), data, str(tiny_model_dir), str(out), "orm-implicit")
    assert meta["first_loss"] == pytest.approx(0.693, abs=0.01)  # pi = pi_ref at first: even odds
    assert meta["loss"] < meta["first_loss"]
    write_implicit_spec(str(out), str(tiny_model_dir), 0.5)
    assert not json.loads((out / IMPLICIT_FILE).read_text())["reference"].startswith("/")
    scorer = load_scorer(str(out))
    assert isinstance(scorer, ImplicitPRMScorer)
    train = rows("orm", 8)
    values = scorer.score([r["prompt"] for r in train], [r["completions"] for r in train])
    assert all(len(v) == len(r["completions"]) and all(0 < x < 1 for x in v) for v, r in zip(values, train))
    # Every training row is a wrong solution: the trained values moved below even odds.
    assert not any(r["labels"][-1] for r in train) and sum(v[-1] for v in values) / len(values) < 0.5
