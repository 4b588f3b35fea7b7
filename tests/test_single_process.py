"""The single-process verbs through the CLI: organism splits, a tiny model, sampling and grading
real GSM8K lines (a malformed one quarantined)."""

from __future__ import annotations

import json

from glore_ray.cli import main


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
