"""Segmentation metrics of the field, per image and per label.

Definitions (binary masks ``p`` predicted, ``t`` truth):

- Dice ``2|p∩t| / (|p|+|t|)`` (:func:`medxai.overlap.dice`, MONAI's); IoU (Jaccard)
  ``|p∩t| / |p∪t|``; both 1 when both masks are empty (the package's rule, see
  :mod:`medxai.overlap`).
- pixel accuracy ``(TP+TN)/N``; sensitivity ``TP/(TP+FN)``; specificity ``TN/(TN+FP)``
  (NaN when the denominator is 0).
- HD95: 95th percentile of the symmetric surface distances (medpy), in mm when the voxel
  spacing is given (pixels otherwise); 0 when both are empty, NaN when exactly one is.
- ISIC 2018 challenge score: the per-image Jaccard, counted as 0 below 0.65, averaged.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from medxai.choices import METRIC_NAMES
from medxai.overlap import dice

__all__ = ["binary_metrics", "isic_thresholded_jaccard", "summarise", "METRIC_NAMES"]


def isic_thresholded_jaccard(iou: float, threshold: float = 0.65) -> float:
    """The ISIC 2018 Task 1 per-image score: Jaccard, or 0 below ``threshold``."""
    return float(iou) if iou >= threshold else 0.0


def _hd95(pred: np.ndarray, truth: np.ndarray, spacing: Sequence[float] | None) -> float:
    if not pred.any() and not truth.any():
        return 0.0
    if not pred.any() or not truth.any():
        return math.nan
    from medpy.metric.binary import hd95

    return float(hd95(pred, truth, voxelspacing=list(spacing) if spacing else None))


def binary_metrics(
    pred: np.ndarray, truth: np.ndarray, spacing: Sequence[float] | None = None
) -> dict[str, float]:
    """All metrics of :data:`METRIC_NAMES` for two boolean masks of the same shape."""
    import torch  # here: the module stays torch-free (the metric names are read without it)

    p = np.asarray(pred).astype(bool)
    t = np.asarray(truth).astype(bool)
    if p.shape != t.shape:
        raise ValueError(f"prediction {p.shape} and truth {t.shape} differ in shape")
    tp = float(np.logical_and(p, t).sum())
    fp = float(np.logical_and(p, ~t).sum())
    fn = float(np.logical_and(~p, t).sum())
    tn = float(p.size) - tp - fp - fn
    iou = 1.0 if tp + fp + fn == 0 else tp / (tp + fp + fn)
    return {
        "dice": float(dice(torch.from_numpy(p)[None, None], torch.from_numpy(t)[None, None])),
        "iou": iou,
        "pixel_accuracy": (tp + tn) / p.size,
        "sensitivity": tp / (tp + fn) if tp + fn else math.nan,
        "specificity": tn / (tn + fp) if tn + fp else math.nan,
        "hd95": _hd95(p, t, spacing),
        "isic_score": isic_thresholded_jaccard(iou),
    }


def summarise(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Mean, median, std and count (NaNs excluded) of each metric over ``rows``."""
    out: dict[str, dict[str, float]] = {}
    for name in METRIC_NAMES:
        vals = np.asarray([r[name] for r in rows if name in r], dtype=np.float64)
        vals = vals[np.isfinite(vals)]
        out[name] = {
            "mean": float(vals.mean()) if vals.size else math.nan,
            "median": float(np.median(vals)) if vals.size else math.nan,
            "std": float(vals.std()) if vals.size else math.nan,
            "n": int(vals.size),
        }
    return out
