"""Dice, once for the package: MONAI's :func:`monai.metrics.compute_dice` with medxai's rule
for empty masks. Training validation, the evaluation metrics and the explain faithfulness curves
call :func:`dice`; the uncertainty view agreement (8 views a photo) computes the same float32
ratio from pixel counts (``medxai.uncertainty``; equal to :func:`dice`, tested).

**The rule for empty masks** (MONAI's ``ignore_empty=False``): a class absent from both the
prediction and the truth scores **1** (nothing to find, nothing found); a class absent from the
truth but predicted scores 0. It is the rule every figure medxai reports was computed with (the
model cards' validation Dice, the evaluation tables, the training curves). Callers that average
over classes decide which classes count (the uncertainty view agreement averages over the labels
present in either map).

At the bottom of the layers (torch and MONAI are imported when it is called).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

__all__ = ["dice"]


def dice(
    pred: torch.Tensor,
    truth: torch.Tensor,
    *,
    num_classes: int | None = None,
    include_background: bool = True,
) -> torch.Tensor:
    """Dice per case and class, ``(N, C)``: ``2|p∩t| / (|p|+|t|)``, 1 when both are empty.

    Args:
        pred: ``(N, 1, *spatial)`` class maps (give ``num_classes``), or ``(N, C, *spatial)``
            masks (bool or 0/1); a single channel of masks is one class.
        truth: the same form as ``pred``.
        num_classes: with class maps, how many classes (the background 0 included).
        include_background: False leaves class 0 out (the columns are then classes 1..C-1).

    Returns:
        float32 (the counts are exact integers; the one division is float32's, within about
        1e-7 of the exact ratio).
    """
    from monai.metrics import compute_dice

    return compute_dice(
        pred,
        truth,
        include_background=include_background,
        ignore_empty=False,
        num_classes=num_classes,
    )
