"""Evaluation on top of inference and explain: segmentation metrics of the field over a data
folder (``medxai evaluate``) and faithfulness runs of the saliency methods over a data folder
(``medxai explain --evaluate``).

Modules: :mod:`~medxai.evaluation.metrics` (per-image metrics), :mod:`~medxai.evaluation.
segmentation` (a model or prediction files against truth), :mod:`~medxai.evaluation.saliency`
(faithfulness of saliency methods). The model runs as its bundle says (threshold and
post-processing); the caller's network is left in the mode and on the device it was in.

Names are imported lazily, so that ``medxai.evaluation.metrics`` stays free of torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "METRIC_NAMES": "medxai.evaluation.metrics",
    "binary_metrics": "medxai.evaluation.metrics",
    "isic_thresholded_jaccard": "medxai.evaluation.metrics",
    "summarise": "medxai.evaluation.metrics",
    "DEFAULT_METHODS": "medxai.evaluation.saliency",
    "evaluate_saliency": "medxai.evaluation.saliency",
    "format_table": "medxai.evaluation.saliency",
    "list_images": "medxai.evaluation.saliency",
    "EvaluationResult": "medxai.evaluation.segmentation",
    "evaluate_folders": "medxai.evaluation.segmentation",
    "evaluate_model": "medxai.evaluation.segmentation",
    "write_csv": "medxai.evaluation.segmentation",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'medxai.evaluation' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
