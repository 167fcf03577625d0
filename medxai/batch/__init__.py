"""Batch processing of PACS exports: scan, manifest, workers and scale-out.

- :func:`run_batch`: scan an export, segment every series that fits the model, resumable
  (``medxai batch``).
- :mod:`medxai.batch.scan`: header-only parallel scan, grouping into studies, series and stacks,
  fit-to-model selection.
- :class:`Manifest`: the SQLite job manifest (WAL) in the output folder, with CSV export.
- :mod:`medxai.batch.runner`: the worker side (model once per worker, batched 2D prediction,
  decoding and writing overlapped with inference); :mod:`medxai.batch.dask_runner`: the same
  jobs on a dask.distributed cluster.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "run_batch",
    "BatchProgress",
    "BatchSummary",
    "Manifest",
    "scan_export",
    "group_stacks",
    "fit_reason",
    "ModelRequirements",
    "Stack",
    "predict_batch",
]

# imported on first use, so that scan worker processes do not load torch
_WHERE = {
    "run_batch": "job",
    "BatchProgress": "job",
    "BatchSummary": "job",
    "Manifest": "manifest",
    "predict_batch": "runner",
    "scan_export": "scan",
    "group_stacks": "scan",
    "fit_reason": "scan",
    "ModelRequirements": "scan",
    "Stack": "scan",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(f"medxai.batch.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'medxai.batch' has no attribute {name!r}")
