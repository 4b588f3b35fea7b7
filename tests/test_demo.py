"""The foundation's job end to end, through the CLI: organism data, tiny policy, SFT, vLLM
sampling, grading, table."""

from __future__ import annotations

import json

from glore_ray.cli import main
from glore_ray.data import Quarantine, load_problems

MINIATURE = ["data.organism.n_train=300", "data.organism.n_test=20", "policy.steps=6",
             "policy.warmup_steps=1", "policy.batch_size=16", "policy.log_every=3", "eval.n_problems=6",
             "eval.k=3", "sampling.max_tokens=48", "engine.backend=vllm"]


def test_demo_runs_end_to_end_and_prints_the_table(tmp_path, capsys) -> None:
    out = tmp_path / "run"
    assert main(["demo", "--out", str(out), *[a for o in MINIATURE for a in ("--set", o)]]) == 0
    printed = capsys.readouterr().out
    assert "sft step 6/6" in printed
    assert "greedy accuracy" in printed and "pass@3" in printed and "(vllm engine)" in printed

    assert len(list(load_problems(str(out / "data" / "train.jsonl"), quarantine=Quarantine()))) == 300
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        assert (out / "policy" / name).is_file()
    summary = json.loads((out / "eval" / "summary.json").read_text())
    assert summary["n_problems"] == 6 and summary["k"] == 3 and summary["engine"] == "vllm"
    for key in ("greedy_accuracy", "sample_accuracy", "pass_at_k"):
        assert 0.0 <= summary[key] <= 1.0
    rows = [json.loads(line) for line in (out / "eval" / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 6 * (1 + 3)
    assert sum(r["mode"] == "greedy" for r in rows) == 6
    # Every wrong organism sample carries the exact checker's verdict and the step it points at.
    assert all(r["error_kind"] is not None and r["first_wrong_step"] is not None for r in rows if not r["correct"])
    assert all(r["first_wrong_step"] is None for r in rows if r["correct"] and r["error_kind"] != "wrong_plan")


def test_cli_writes_organism_splits_and_samples_gsm8k_files(tmp_path, capsys) -> None:
    train = tmp_path / "train.jsonl"
    assert main(["organism", "--split", "train", "--out", str(train), "--set", "data.organism.n_train=40"]) == 0
    assert sum(1 for _ in train.open()) == 40
    model = tmp_path / "model"
    assert main(["build-model", "--data", str(train), "--out", str(model)]) == 0
    # Real GSM8K lines with a malformed one: it is quarantined, the rest is sampled and graded.
    from tests.conftest import SHARED_DATA

    gsm8k = tmp_path / "gsm8k.jsonl"
    lines = (SHARED_DATA / "gsm8k" / "test.jsonl").read_text(encoding="utf-8").splitlines()[:3]
    gsm8k.write_text("\n".join([lines[0], '{"question": "no answer"}', *lines[1:]]) + "\n")
    capsys.readouterr()
    assert main(["sample", "--data", str(gsm8k), "--model", str(model), "--out", str(tmp_path / "eval"),
                 "--set", "engine.backend=hf", "--set", "eval.k=2", "--set", "sampling.max_tokens=8"]) == 0
    printed = capsys.readouterr().out
    assert "gsm8k.jsonl:2: missing field 'answer'" in printed
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert summary["n_problems"] == 3 and summary["engine"] == "hf"
