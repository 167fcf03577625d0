"""Moved to :mod:`medxai.evaluation.segmentation`; these names stay importable from here."""

from medxai.evaluation.segmentation import (
    EvaluationResult,
    evaluate_folders,
    evaluate_model,
    write_csv,
)

__all__ = ["EvaluationResult", "evaluate_model", "evaluate_folders", "write_csv"]
