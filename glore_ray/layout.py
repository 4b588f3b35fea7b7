"""Where a pipeline run keeps what it makes: `<run>/<stage>/` per stage, each stage's outputs in
named folders below it (`data/` a dataset, `model/` a trained model, ...). The pipeline writes this
layout; the Serve app and `glore serve` read it. Every path of a run is spelled here."""

from __future__ import annotations

from dataclasses import dataclass

from glore_ray.config import GloreConfig
from glore_ray.config.ensemble import MODELS

DATA, MODEL = "data", "model"
"""A stage's dataset and its trained model."""
HELDOUT, UNWEIGHTED, ROWS, GLOBAL, LOCAL = "heldout", "unweighted", "rows", "global", "local"
"""The ORM labels' held-out rows, balanced labels before their weights, expert iteration's SFT rows,
and the two kinds of refinement pairs."""


def output(stage_dir: str, part: str) -> str:
    """A folder of a stage's outputs, from the stage's directory."""
    return f"{stage_dir}/{part}"


@dataclass(frozen=True)
class RunLayout:
    root: str

    def stage(self, name: str) -> str:
        return f"{self.root}/{name}"

    def output(self, stage: str, part: str = DATA) -> str:
        return output(self.stage(stage), part)

    def model(self, stage: str) -> str:
        return self.output(stage, MODEL)

    def split(self, split: str) -> str:
        """A data split the data stage wrote (`train`, `validation`, `test`)."""
        return f"{self.stage('data')}/{split}.jsonl"

    @property
    def sft_rows(self) -> str:
        return f"{self.stage('data')}/sft.jsonl"

    @staticmethod
    def expert_iteration(round_: int, part: str = "") -> str:
        """Round `round_`'s stage names: its samples, its rows, its training (`part` empty)."""
        return f"expert_iteration_{round_}" + (f"_{part}" if part else "")

    @classmethod
    def policy_stage(cls, cfg: GloreConfig) -> str:
        """The stage whose model is the final policy: the last expert-iteration round's, else SFT's."""
        rounds = cfg.expert_iteration.rounds
        return cls.expert_iteration(rounds) if rounds else "policy"

    def model_dirs(self, cfg: GloreConfig) -> dict[str, str]:
        """The ensemble's five model folders, by model name, and the likelihood reranker's folder
        when `reranker.likelihood` (it then ranks in the ORM's place)."""
        dirs = {m: self.model(self.policy_stage(cfg) if m == "policy" else m) for m in MODELS}
        return dirs | ({"reranker": self.model("reranker")} if cfg.reranker.likelihood else {})

