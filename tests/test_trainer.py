"""Ray Train with 2 CPU workers: every objective under DDP, ZeRO-2 and ZeRO-3; the exported folder
loads and runs; a killed worker resumes from its checkpoint."""

from __future__ import annotations

import os
import signal
import threading
import time
from dataclasses import replace
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from glore_ray.config import TrainConfig
from glore_ray.objectives import OBJECTIVES, STEP_REWARD
from glore_ray.trainer import fit
from tests.training_rows import rows

# Two workers at half a CPU each leave a CPU for Ray Data's read tasks (a full pool hangs them).
TWO_WORKERS = TrainConfig(steps=4, batch_size=8, lr=3e-3, warmup_steps=1, log_every=1, checkpoint_every=2,
                          num_workers=2, cpus_per_worker=0.5, max_failures=0)


def write_rows(objective: str, n: int, path: Path) -> str:
    pq.write_table(pa.Table.from_pylist(rows(objective, n)), path)
    return str(path)


# Every strategy with both heads (causal LM, token classifier) and every objective at least once:
# a Ray Train run costs ~50 s here, and the full 5 x 3 matrix took the suite past 18 minutes.
MATRIX = [("policy", "ddp"), ("sorm", "ddp"), ("global-refiner", "zero2"), ("orm", "zero2"),
          ("local-refiner", "zero3"), ("sorm", "zero3")]


def test_the_matrix_covers_every_objective_and_strategy() -> None:
    assert {o for o, _ in MATRIX} == set(OBJECTIVES)
    for strategy in ("ddp", "zero2", "zero3"):
        assert {o in STEP_REWARD for o, s in MATRIX if s == strategy} == {True, False}


@pytest.mark.parametrize("objective, strategy", MATRIX)
def test_each_objective_trains_and_exports(objective, strategy, ray_module, tiny_model_dir, tmp_path) -> None:
    # 16 rows = one fixed batch of 8 per worker: the loss must go down on it.
    data = write_rows(objective, 16, tmp_path / "rows.parquet")
    cfg = replace(TWO_WORKERS, strategy=strategy)
    meta = fit(objective, cfg, data, str(tiny_model_dir), str(tmp_path / "out"), f"{objective}-{strategy}")
    assert meta["step"] == 4 and meta["resumed_from"] is None
    assert meta["loss"] < meta["first_loss"]

    from transformers import AutoModelForCausalLM, AutoModelForTokenClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "out")
    ids = tokenizer("Question: Ava has 3 apples.\nAnswer:\n", return_tensors="pt")["input_ids"]
    if objective in STEP_REWARD:
        model = AutoModelForTokenClassification.from_pretrained(tmp_path / "out")
        assert model(input_ids=ids).logits.shape == (1, ids.shape[1], 1)
    else:
        model = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
        out = model.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        assert out.shape[1] > ids.shape[1]
    trained = model.state_dict()["model.embed_tokens.weight"]
    initial = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()["model.embed_tokens.weight"]
    assert trained.dtype == torch.float32 and not torch.equal(trained, initial)


def test_a_bad_row_fails_the_run_naming_it(ray_module, tiny_model_dir, tmp_path) -> None:
    good = rows("sorm", 15)
    bad = {**good[0], "id": "sorm-row-7", "labels": [True]}
    pq.write_table(pa.Table.from_pylist(good + [bad]), tmp_path / "rows.parquet")
    with pytest.raises(Exception, match=r"row sorm-row-7: 1 labels for \d+ steps in 'completions'"):
        fit("sorm", replace(TWO_WORKERS, steps=2), str(tmp_path / "rows.parquet"), str(tiny_model_dir),
            str(tmp_path / "out"), "bad-row")


def test_cli_trains_an_objective_and_reports_progress(ray_module, tiny_model_dir, tmp_path, capsys) -> None:
    from glore_ray.cli import main

    data = write_rows("global-refiner", 16, tmp_path / "rows.parquet")
    args = ["train", "global-refiner", "--data", data, "--model", str(tiny_model_dir), "--out", str(tmp_path / "gr")]
    for override in ("steps=2", "warmup_steps=0", "batch_size=8", "num_workers=2", "cpus_per_worker=0.5"):
        args += ["--set", f"global_refiner.{override}"]
    assert main(args) == 0
    assert "global-refiner: 2 steps, final loss" in capsys.readouterr().out
    assert (tmp_path / "gr" / "model.safetensors").is_file()


def test_a_killed_worker_resumes_from_its_checkpoint(ray_module, tiny_model_dir, tmp_path) -> None:
    import psutil

    data = write_rows("policy", 64, tmp_path / "rows.parquet")
    cfg = replace(TWO_WORKERS, steps=40, checkpoint_every=4, max_failures=1, log_every=4)
    result: dict = {}
    run = threading.Thread(target=lambda: result.update(
        fit("policy", cfg, data, str(tiny_model_dir), str(tmp_path / "out"), "killed")))
    run.start()
    storage = Path(str(tmp_path / "out") + ".ray_train") / "killed"
    deadline = time.time() + 240
    # Two checkpoints on storage: the first one is surely registered with the controller.
    while len(list(storage.glob("checkpoint_*/meta.json"))) < 2 and time.time() < deadline:
        time.sleep(0.5)
    # Ray titles worker processes `ray::<Actor>.<method>`; this test's cluster is the only one.
    workers = [p for p in psutil.process_iter(["cmdline"]) if "ray::RayTrainWorker" in " ".join(p.info["cmdline"] or [])]
    assert workers, "no live Ray Train worker to kill"
    os.kill(workers[0].pid, signal.SIGKILL)
    run.join(timeout=280)
    assert not run.is_alive()
    assert result["step"] == 40
    assert result["resumed_from"] is not None and 4 <= result["resumed_from"] < 40
