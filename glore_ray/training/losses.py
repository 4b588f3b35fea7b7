"""The losses of the two heads GLoRe trains, over examples encoded by `models.encoding`."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from glore_ray.models.encoding import IGNORE


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over positions whose label is not IGNORE."""
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=IGNORE)


def step_reward_loss(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Binary cross-entropy of the per-token logit (B, T) or (B, T, 1) at labelled positions,
    weighted (the weighted mean) when `weights` (B, T) are given."""
    logits = logits.reshape(labels.shape).float()
    mask = labels != IGNORE
    losses = F.binary_cross_entropy_with_logits(logits[mask], labels[mask].float(), reduction="none")
    if weights is None:
        return losses.mean()
    w = weights[mask].float()
    return (losses * w).sum() / w.sum().clamp_min(1e-12)


def final_labels_only(labels: torch.Tensor) -> torch.Tensor:
    """`labels` with every labelled position but each row's last set to IGNORE: an outcome reward
    model's one target (the answer line)."""
    labelled = labels != IGNORE
    keep = torch.zeros_like(labelled)
    keep[torch.arange(labels.shape[0]), last_labelled(labels)] = labelled.any(1)
    return torch.where(keep, labels, torch.full_like(labels, IGNORE))


def last_labelled(labels: torch.Tensor) -> torch.Tensor:
    """(B,) the position of each row's last labelled token (its answer line's newline)."""
    labelled = labels != IGNORE
    return labelled.shape[1] - 1 - labelled.flip(1).int().argmax(1)
