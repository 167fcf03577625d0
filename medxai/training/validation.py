"""Validation during training: the mean foreground Dice per case of class maps (MONAI's, by
:func:`medxai.overlap.dice`), computed with torch where the predictions are (shared by the 2D loop in :mod:`medxai.training.trainer` and
the 3D sliding-window validation in :mod:`medxai.training.volumes`)."""

from __future__ import annotations

import torch

from medxai.overlap import dice

__all__ = ["dice_per_case"]


def dice_per_case(pred: torch.Tensor, label: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Mean foreground Dice per case; ``pred``/``label`` are ``(N, 1, *spatial)`` class maps.

    :func:`medxai.overlap.dice` per foreground class (a class absent from both scores 1).
    """
    return dice(pred, label, num_classes=num_classes, include_background=False).mean(1)
