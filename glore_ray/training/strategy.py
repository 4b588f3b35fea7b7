"""How a model is wrapped, updated, checkpointed and exported: plain torch / DDP, or DeepSpeed ZeRO-2/3
(OpenRLHF's `DeepspeedStrategy` split). The training loop and the Ray Train worker see one interface:
`model`, `step(loss, lr)`, `save(dir)`, `load(dir)`, `export(dir, tokenizer)`.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch

from glore_ray.config import TrainConfig

DS_TAG = "state"  # DeepSpeed also writes a file named "latest": the tag must differ
TORCH_STATE = "state.pt"


def adamw(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.95))


def _set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


class TorchStrategy:
    """AdamW with gradient clipping, in one process or under DDP (`wrap`: Ray Train's prepare_model).
    Rank 0 writes the checkpoints: every rank holds the whole state."""

    def __init__(self, model: torch.nn.Module, cfg: TrainConfig, rank: int = 0, wrap=None):
        self.cfg, self.rank = cfg, rank
        self.model = wrap(model) if wrap else model
        # DDP wraps the model; prepare_model leaves a single worker's model bare.
        self.bare = getattr(self.model, "module", self.model)
        self.optimizer = adamw(self.bare, cfg)

    def step(self, loss: torch.Tensor, lr: float) -> None:
        _set_lr(self.optimizer, lr)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.optimizer.step()

    @property
    def writes_checkpoint(self) -> bool:
        return self.rank == 0

    def save(self, folder: Path) -> None:
        if self.rank == 0:
            torch.save({"model": self.bare.state_dict(), "optimizer": self.optimizer.state_dict()}, folder / TORCH_STATE)

    def load(self, folder: Path) -> None:
        state = torch.load(folder / TORCH_STATE, map_location="cpu", weights_only=True)
        self.bare.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])

    def export(self, out: Path, tokenizer) -> None:
        if self.rank == 0:
            self.bare.save_pretrained(out, safe_serialization=True)
            tokenizer.save_pretrained(out)


def deepspeed_config(cfg: TrainConfig, bf16: bool) -> dict:
    stage = {"zero2": 2, "zero3": 3}[cfg.strategy]
    zero: dict[str, Any] = {"stage": stage}
    if cfg.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if stage == 3:
        # The exported folder needs whole 16-bit weights, gathered from every rank at save time.
        zero["stage3_gather_16bit_weights_on_model_save"] = True
        if cfg.offload_params:
            zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    return {
        "train_micro_batch_size_per_gpu": cfg.batch_size_per_worker,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": cfg.grad_clip,
        "zero_optimization": zero,
        "bf16": {"enabled": bf16},
        "zero_allow_untested_optimizer": True,  # torch AdamW: no fused-op build on CPU
        "steps_per_print": 10**9,
    }


class DeepSpeedStrategy:
    """DeepSpeed ZeRO-2 or -3: every rank saves its shard of the state; export gathers the weights."""

    writes_checkpoint = True

    def __init__(self, model: torch.nn.Module, cfg: TrainConfig, ds_config: dict, rank: int = 0):
        import deepspeed

        self.rank = rank
        self.model, self.optimizer, _, _ = deepspeed.initialize(model=model, optimizer=adamw(model, cfg),
                                                                config=ds_config)
        self.bare = self.model.module

    def step(self, loss: torch.Tensor, lr: float) -> None:
        _set_lr(self.optimizer, lr)
        self.model.backward(loss)
        self.model.step()

    def save(self, folder: Path) -> None:
        self.model.save_checkpoint(str(folder), tag=DS_TAG)

    def load(self, folder: Path) -> None:
        self.model.load_checkpoint(str(folder), tag=DS_TAG)

    def export(self, out: Path, tokenizer) -> None:
        """Hugging Face folder (safetensors); under ZeRO-3 the 16-bit weights are gathered from all
        ranks (every rank must call this)."""
        if self.model.zero_optimization_stage() == 3:
            with tempfile.TemporaryDirectory() as tmp:
                self.model.save_16bit_model(tmp, "consolidated.bin")  # collective: all ranks gather
                if self.rank == 0:
                    state = torch.load(Path(tmp) / "consolidated.bin", map_location="cpu", weights_only=True)
                    self.bare.save_pretrained(out, state_dict=state, safe_serialization=True)
        elif self.rank == 0:
            self.bare.save_pretrained(out, safe_serialization=True)
        if self.rank == 0:
            tokenizer.save_pretrained(out)
