"""The JSON report of a run, and the per-label statistics that go into it."""

from __future__ import annotations

import datetime
import enum
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePath
from typing import Any

import numpy as np

from medxai.errors import InputError
from medxai.io.writers._atomic import write_text_atomic
from medxai.io.writers._common import as_label_array, normalise_labels
from medxai.labelmaps import value_counts

__all__ = ["write_report_json", "label_statistics", "to_plain"]


def to_plain(obj: Any) -> Any:
    """``obj`` with only JSON types: numpy scalars/arrays, tensors, paths, dates, enums, sets and
    dataclass-like objects converted; non-string keys made strings; NaN and infinities -> None."""
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, (int, np.integer)) and not isinstance(obj, bool):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, (float, np.floating)):
        value = float(obj)
        return value if math.isfinite(value) else None
    if isinstance(obj, Mapping):
        return {
            str(to_plain(k)) if not isinstance(k, str) else k: to_plain(v) for k, v in obj.items()
        }
    if isinstance(obj, (list, tuple, set, frozenset)):
        items = sorted(obj, key=repr) if isinstance(obj, (set, frozenset)) else obj
        return [to_plain(v) for v in items]
    if hasattr(obj, "detach") and hasattr(obj, "cpu"):  # torch tensors, MONAI MetaTensors
        obj = obj.detach().cpu().numpy()
    if isinstance(obj, np.ndarray):
        return to_plain(obj.tolist())
    if isinstance(obj, PurePath):
        return str(obj)
    if isinstance(obj, (datetime.datetime, datetime.date, datetime.time)):
        return obj.isoformat()
    if isinstance(obj, enum.Enum):
        return to_plain(obj.value)
    if isinstance(obj, bytes):
        return obj.decode("utf-8", errors="replace")
    if hasattr(obj, "__dataclass_fields__"):
        return to_plain({name: getattr(obj, name) for name in obj.__dataclass_fields__})
    return str(obj)


def write_report_json(report: Mapping[str, Any], path: str | Path) -> Path:
    """Write ``report`` as JSON (UTF-8, sorted keys, indented), atomically; returns the path.

    numpy / torch values, paths, dates and enums are converted (:func:`to_plain`); NaN and
    infinite numbers become ``null`` so that the file is strict JSON.
    """
    if not isinstance(report, Mapping):
        raise InputError(f"a report must be a mapping; found {type(report).__name__}")
    text = json.dumps(
        to_plain(report), indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False
    )
    return write_text_atomic(path, text + "\n")


def label_statistics(
    labels: Any,
    spacing: Sequence[float] | None,
    label_info: Sequence[Mapping[str, Any]] | None,
    has_patient_geometry: bool,
) -> list[dict[str, Any]]:
    """Size of each label.

    Args:
        labels: label map ``(I, J)`` (2D: areas) or ``(I, J, K)`` (3D: volumes).
        spacing: voxel size along ``I, J[, K]`` in mm (ignored without patient geometry).
        label_info: ``[{"value", "name", "color"}, ...]``; every non-zero label described is
            listed (count 0 when absent), and so is any other value found in the mask.
        has_patient_geometry: whether ``spacing`` is in millimetres of a patient.

    Returns:
        one dict per label, by value: ``value``, ``name``, ``voxel_count``, and
        ``area_mm2`` (2D) / ``volume_mm3`` and ``volume_ml`` (3D) with patient geometry, else ``area_pixels`` /
        ``volume_voxels``.
    """
    arr = as_label_array(labels)
    names = {s.value: s.name for s in normalise_labels(label_info)}
    counts = value_counts(arr)
    values = sorted(set(names) | {v for v in counts if v != 0})
    size = None
    if has_patient_geometry:
        if spacing is None or len(spacing) < arr.ndim:
            raise InputError(
                f"a {arr.ndim}D label map with patient geometry needs "
                f"{arr.ndim} spacings; found {spacing!r}"
            )
        size = float(np.prod([float(s) for s in list(spacing)[: arr.ndim]]))
    out = []
    for value in values:
        count = counts.get(value, 0)
        entry: dict[str, Any] = {
            "value": value,
            "name": names.get(value, f"label_{value}"),
            "voxel_count": count,
        }
        if arr.ndim == 2:
            if size is not None:
                entry["area_mm2"] = count * size
            else:
                entry["area_pixels"] = count
        else:
            if size is not None:
                entry["volume_mm3"] = count * size
                entry["volume_ml"] = count * size / 1000.0
            else:
                entry["volume_voxels"] = count
        out.append(entry)
    return out
