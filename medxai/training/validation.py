"""Validation during training: the mean foreground Dice per case of class maps, computed with
torch where the predictions are (shared by the 2D loop in :mod:`medxai.training.trainer` and
the 3D sliding-window validation in :mod:`medxai.training.volumes`)."""

from __future__ import annotations

import torch

__all__ = ["dice_per_case"]


def dice_per_case(pred: torch.Tensor, label: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Mean foreground Dice per case; ``pred``/``label`` are ``(N, 1, *spatial)`` class maps.

    A case where both prediction and truth are empty scores 1.
    """
    scores = []
    for c in range(1, num_classes):
        p = (pred == c).flatten(1).float()
        t = (label == c).flatten(1).float()
        inter = (p * t).sum(1)
        denom = p.sum(1) + t.sum(1)
        scores.append(
            torch.where(denom > 0, 2 * inter / denom.clamp(min=1), torch.ones_like(denom))
        )
    return torch.stack(scores, 1).mean(1)
