"""``medxai evaluate``: a model on image/label pairs, or prediction files against truth files.

Predictions are compared with the truth on the truth's own grid (for ISIC: the 512x512 masks),
per image and per foreground label; spacing comes from the truth file (mm when it has patient
geometry, pixels otherwise).
"""

from __future__ import annotations

import csv
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medxai.errors import InputError
from medxai.evaluation.metrics import METRIC_NAMES, binary_metrics, summarise
from medxai.io.datasets import find_pairs, is_data_file, label_values, mask_key, stem

__all__ = ["EvaluationResult", "evaluate_model", "evaluate_folders", "write_csv"]


@dataclass
class EvaluationResult:
    """Per-image rows (case, label, metrics) and the summary per label."""

    rows: list[dict[str, Any]]
    summary: dict[str, dict[str, dict[str, float]]]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "summary": self.summary,
            "n_images": len({r["case"] for r in self.rows}),
            "seconds": round(self.seconds, 2),
        }


def _truth_array(path: Path) -> tuple[np.ndarray, list[float], bool]:
    from medxai.io.readers import read_image

    img = read_image(path)
    arr = label_values(img.numpy()[:1])[0]
    has_geo = bool(img.meta.get("has_patient_geometry"))
    return arr, list(img.meta.get("spacing", [])), has_geo


def _rows_for(
    case: str,
    pred: np.ndarray,
    truth: np.ndarray,
    spacing: Sequence[float] | None,
    labels: Sequence[int],
) -> list[dict[str, Any]]:
    rows = []
    for lab in labels:
        m = binary_metrics(pred == lab, truth == lab, spacing)
        rows.append({"case": case, "label": int(lab), **m})
    return rows


def _summary(rows: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    by_label: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_label.setdefault(str(r["label"]), []).append(r)
    return {lab: summarise(rs) for lab, rs in by_label.items()}


def evaluate_model(
    bundle: Any,
    data: str | Path,
    *,
    device: str = "auto",
    progress: Callable[[int, int], None] | None = None,
) -> EvaluationResult:
    """Predict every image of ``data`` (a folder :func:`find_pairs` understands) and score it."""
    from medxai.inference import predict
    from medxai.io.readers import read_image

    t0 = time.perf_counter()
    pairs = find_pairs(data)
    fg = [int(lab["value"]) for lab in bundle.foreground_labels] or [1]
    rows: list[dict[str, Any]] = []
    for n, pair in enumerate(pairs):
        image = read_image(pair.image)
        truth, spacing, has_geo = _truth_array(pair.label)
        pred = predict(bundle, image, device=device, source=str(pair.image)).labels[0].numpy()
        if pred.shape != truth.shape:
            pred = pred.reshape(truth.shape) if pred.size == truth.size else pred
        if pred.shape != truth.shape:
            raise InputError(
                f"prediction grid {pred.shape} differs from the mask's {truth.shape}",
                path=pair.label,
            )
        rows += _rows_for(pair.case_id, pred, truth, spacing if has_geo else None, fg)
        if progress:
            progress(n + 1, len(pairs))
    return EvaluationResult(rows, _summary(rows), time.perf_counter() - t0)


def _index(folder: Path) -> dict[str, Path]:
    out = {}
    for p in sorted(folder.rglob("*")):
        if is_data_file(p):
            out[mask_key(stem(p))] = p
    return out


def evaluate_folders(
    pred_dir: str | Path, truth_dir: str | Path, labels: Sequence[int] | None = None
) -> EvaluationResult:
    """Score prediction files against truth files matched by case name.

    A prediction matches a truth file when their stems agree after removing mask suffixes
    (``_segmentation``, ``_mask``, ``_label``, ``_seg``). Predictions may also be medxai output
    folders: ``PRED_DIR/<case>/labels.nii.gz``.
    """
    t0 = time.perf_counter()
    pred_dir, truth_dir = Path(pred_dir), Path(truth_dir)
    for d in (pred_dir, truth_dir):
        if not d.is_dir():
            raise InputError("is not a folder", path=d)
    truths = _index(truth_dir)
    preds = {}
    for case, p in _index(pred_dir).items():
        key = p.parent.name if case == "labels" else case
        preds[key] = p
    missing = sorted(set(truths) - set(preds))
    if not truths:
        raise InputError("holds no label files", path=truth_dir)
    if missing:
        raise InputError(
            f"{len(missing)} truth case(s) have no prediction, e.g. {missing[:3]}",
            path=pred_dir,
            hint="name predictions like the truth files",
        )
    rows: list[dict[str, Any]] = []
    for case, tpath in truths.items():
        truth, spacing, has_geo = _truth_array(tpath)
        pred, _, _ = _truth_array(preds[case])
        if pred.shape != truth.shape:
            raise InputError(
                f"prediction grid {pred.shape} differs from the truth's {truth.shape}",
                path=preds[case],
            )
        labs = list(labels) if labels else sorted(set(np.unique(truth).tolist()) - {0}) or [1]
        rows += _rows_for(case, pred, truth, spacing if has_geo else None, labs)
    return EvaluationResult(rows, _summary(rows), time.perf_counter() - t0)


def write_csv(rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """One row per image and label: case, label and every metric."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["case", "label", *METRIC_NAMES])
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in r.items()})
    return path
