"""Batch processing of PACS exports: scan, manifest, workers and scale-out.

- :func:`run_batch`: scan an export, segment every series that fits the model, resumable
  (``medxai batch``).
- :mod:`medxai.batch.scan`: header-only parallel scan, grouping into studies, series and stacks,
  fit-to-model selection.
- :class:`Manifest`: the SQLite job manifest (WAL) in the output folder, with CSV export.
- :class:`Job`, :class:`Result` (:mod:`medxai.batch.types`): one series for a worker, and its
  outcome.
- :mod:`medxai.batch.runner`: the worker side (model once per worker; decoding, batched 2D
  prediction with saliency, and writing overlapped in a bounded pipeline);
  :mod:`medxai.batch.schedule`: chunks in flight on any executor; :mod:`medxai.batch.dask_runner`:
  the same jobs on a dask.distributed cluster.
- :func:`predict_batch` is :func:`medxai.inference.predict_batch` (the one batched prediction).
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "run_batch",
    "BatchProgress",
    "BatchSummary",
    "Manifest",
    "Job",
    "Result",
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
    "Job": "types",
    "Result": "types",
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
