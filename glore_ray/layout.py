"""Where a pipeline run keeps what it makes: `<run>/<stage>/` per stage, and a trained model in
`<run>/<stage>/model`. The pipeline writes this layout; the Serve app and `glore serve` read it."""

from __future__ import annotations

from glore_ray.config import GloreConfig
from glore_ray.config.ensemble import MODELS


def model_dir(run_dir: str, stage: str) -> str:
    return f"{run_dir}/{stage}/model"


def policy_stage(cfg: GloreConfig) -> str:
    """The stage whose model is the final policy: the last expert-iteration round's, else SFT's."""
    rounds = cfg.expert_iteration.rounds
    return f"expert_iteration_{rounds}" if rounds else "policy"


def model_dirs(cfg: GloreConfig, run_dir: str) -> dict[str, str]:
    """The ensemble's five model folders in a run, by model name, and the likelihood reranker's
    folder when `reranker.likelihood` (it then ranks in the ORM's place)."""
    dirs = {m: model_dir(run_dir, policy_stage(cfg) if m == "policy" else m) for m in MODELS}
    return dirs | ({"reranker": model_dir(run_dir, "reranker")} if cfg.reranker.likelihood else {})
