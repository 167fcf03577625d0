"""``medxai evaluate``: a model on image/label pairs, or prediction files against truth files,
or a prediction (or a model) against a DICOM SEG or RTSTRUCT reference.

Predictions are compared with the truth on the truth's own grid (for ISIC: the 512x512 masks),
per image and per foreground label; spacing comes from the truth file (mm when it has patient
geometry, pixels otherwise). A DICOM SEG or RTSTRUCT reference is first rasterised onto the grid
of the series it was drawn on (:func:`medxai.io.dicom.derived.rasterise_reference`); its segment
(or ROI) numbers are the labels scored, and the prediction must lie on that series' grid.
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

__all__ = [
    "EvaluationResult",
    "evaluate_model",
    "evaluate_folders",
    "evaluate_against_reference",
    "evaluate_model_against_reference",
    "is_dicom_reference",
    "write_csv",
]


@dataclass
class EvaluationResult:
    """Per-image rows (case, label, metrics) and the summary per label."""

    rows: list[dict[str, Any]]
    summary: dict[str, dict[str, dict[str, float]]]
    seconds: float
    reference: dict[str, Any] | None = None  # a DICOM reference: kind, names, warnings

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "summary": self.summary,
            "n_images": len({r["case"] for r in self.rows}),
            "seconds": round(self.seconds, 2),
        }
        if self.reference is not None:
            out["reference"] = self.reference
        return out


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


def is_dicom_reference(path: str | Path) -> bool:
    """Whether ``path`` is a DICOM SEG or RTSTRUCT file (a reference :func:`evaluate_against_
    reference` takes)."""
    from medxai.io.detect import sniff_file

    path = Path(path)
    if not path.is_file() or sniff_file(path) != "dicom":
        return False
    from medxai.io.dicom import read_header
    from medxai.io.dicom.derived import derived_kind

    return derived_kind(read_header(path)) in ("SEG", "RTSTRUCT")


def _on_series_grid(path: Path, series: Any) -> np.ndarray:
    """A prediction file (label map, medxai result folder, or a DICOM SEG/RTSTRUCT) as labels
    ``(I, J[, K])`` on the grid of ``series`` (a LoadedImage)."""
    from medxai.io.dicom.derived import rasterise_reference
    from medxai.io.readers import read_image

    if path.is_dir() and (path / "labels.nii.gz").is_file():  # a medxai result folder
        path = path / "labels.nii.gz"
    if is_dicom_reference(path):
        return rasterise_reference(path, series).labels[0].numpy()
    img = read_image(path)
    grid = series.image
    same = tuple(img.shape[1:]) == tuple(grid.shape[1:]) and np.allclose(
        img.affine.numpy(), grid.affine.numpy(), atol=1e-3
    )
    if not same:
        raise InputError(
            f"is not on the grid of the reference's series (shape {list(img.shape[1:])} vs "
            f"{list(grid.shape[1:])}, or another affine)",
            path=path,
            hint="give the label map medxai (or your tool) wrote for that series",
        )
    return label_values(img.numpy()[:1])[0]


def _score_reference(
    case: str, pred: np.ndarray, reference: str | Path, series: Any, t0: float
) -> EvaluationResult:
    from medxai.io.dicom.derived import rasterise_reference

    ref = rasterise_reference(reference, series)
    truth = ref.labels[0].numpy()
    meta = series.image.meta
    spacing = list(meta.get("spacing", [])) if meta.get("has_patient_geometry") else None
    labels = sorted(ref.names) or sorted(set(np.unique(truth).tolist()) - {0}) or [1]
    rows = _rows_for(case, pred, truth, spacing, labels)
    info = {
        "kind": str(ref.labels.meta.get("reference_kind", "")),
        "path": str(reference),
        "names": {str(k): v for k, v in ref.names.items()},
        "warnings": list(ref.warnings),
    }
    return EvaluationResult(rows, _summary(rows), time.perf_counter() - t0, reference=info)


def evaluate_against_reference(
    prediction: str | Path, reference: str | Path, series: str | Path
) -> EvaluationResult:
    """Score a prediction against a DICOM SEG or RTSTRUCT drawn on ``series``.

    Args:
        prediction: a label map on the series' grid (NIfTI/NRRD/..., as ``medxai segment``
            writes ``labels.nii.gz``; or its result folder), or itself a SEG/RTSTRUCT.
        reference: the SEG or RTSTRUCT (the truth); its segment or ROI numbers are the labels
            scored, each against the prediction's voxels of the same value.
        series: the image series the reference was drawn on (folder or file).

    Raises:
        InputError: the prediction is not on the series' grid.
        SeriesError, UnsupportedInputError: the reference is no SEG/RTSTRUCT of that series.
    """
    from medxai.io.readers import load_image

    t0 = time.perf_counter()
    grid = load_image(series)
    pred = _on_series_grid(Path(prediction), grid)
    return _score_reference(stem(Path(prediction)), pred, reference, grid, t0)


def evaluate_model_against_reference(
    bundle: Any, series: str | Path, reference: str | Path, *, device: str = "auto"
) -> EvaluationResult:
    """Predict ``series`` with ``bundle`` and score it against a DICOM SEG or RTSTRUCT drawn on
    it (see :func:`evaluate_against_reference`); the model's label values are compared with the
    reference's segment (ROI) numbers."""
    from medxai.inference import predict
    from medxai.io.readers import load_image

    t0 = time.perf_counter()
    grid = load_image(series)
    pred = predict(bundle, grid.image, device=device, source=str(series)).labels[0].numpy()
    return _score_reference(stem(Path(series)), pred, reference, grid, t0)


def write_csv(rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """One row per image and label: case, label and every metric; written atomically."""
    from medxai.io.atomic import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["case", "label", *METRIC_NAMES])
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in r.items()})
    return path
