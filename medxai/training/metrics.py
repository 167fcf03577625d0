"""Moved to :mod:`medxai.evaluation.metrics`; these names stay importable from here."""

from medxai.evaluation.metrics import (
    METRIC_NAMES,
    binary_metrics,
    isic_thresholded_jaccard,
    summarise,
)

__all__ = ["binary_metrics", "isic_thresholded_jaccard", "summarise", "METRIC_NAMES"]
