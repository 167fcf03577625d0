"""NIfTI outputs: label maps (uint8, with a JSON sidecar naming the labels) and saliency maps.

Arrays are in MONAI's spatial order ``(I, J[, K])`` and the affine is MONAI's 4x4 RAS one, which is
also NIfTI's convention: the file gets exactly that affine, as sform and (when the affine is a
rotation + scaling that a quaternion can hold) as qform, both with code 1 (scanner). A 2D map is
written as ``(I, J, 1)`` so that 3D Slicer overlays it on the picture.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from medxai.errors import InputError
from medxai.io.writers._atomic import atomic_path, full_suffix, write_text_atomic
from medxai.io.writers._common import (
    SOFTWARE_NAME,
    SOFTWARE_VERSION,
    as_label_array,
    as_numpy,
    normalise_labels,
)
from medxai.labelmaps import present_values

__all__ = ["write_nifti_labels", "write_nifti_mask", "write_nifti_map", "sidecar_path"]

_SCANNER = 1  # NIFTI_XFORM_SCANNER_ANAT


def sidecar_path(path: str | Path) -> Path:
    """The JSON sidecar of a NIfTI file: same folder and stem, ``.json``.

    ``mask.nii.gz`` -> ``mask.json``.
    """
    path = Path(path)
    suffix = full_suffix(path)
    stem = path.name[: -len(suffix)] if suffix else path.name
    return path.with_name(stem + ".json")


def _check_affine(affine: Any) -> np.ndarray:
    aff = as_numpy(affine).astype(np.float64)
    if aff.shape != (4, 4) or not np.all(np.isfinite(aff)):
        raise InputError(f"the affine must be a finite 4x4 matrix; found shape {aff.shape}")
    if abs(np.linalg.det(aff[:3, :3])) < 1e-12:
        raise InputError("the affine is singular (a zero voxel size or parallel axes)")
    return aff


def _check_path(path: str | Path) -> Path:
    path = Path(path)
    if full_suffix(path).lower() not in (".nii", ".nii.gz"):
        raise InputError("a NIfTI output must end in .nii or .nii.gz", path=path)
    return path


def _make_image(data: np.ndarray, affine: np.ndarray, intent: str, descrip: str) -> nib.Nifti1Image:
    img = nib.Nifti1Image(data, affine)
    header = img.header
    header.set_xyzt_units("mm")
    header.set_intent(intent)
    header["descrip"] = descrip[:79].encode("ascii", "replace")
    img.set_sform(affine, code=_SCANNER)
    # The qform can only hold rotation, scaling and a left/right flip; keep it only when it
    # reproduces the affine (not for sheared grids such as a tilted gantry).
    img.set_qform(affine, code=_SCANNER, strip_shears=True)
    if not np.allclose(img.get_qform(), affine, atol=1e-4, rtol=0):
        img.set_qform(None, code=0)
    return img


def _save(img: nib.Nifti1Image, path: Path) -> Path:
    with atomic_path(path) as tmp:
        nib.save(img, tmp)
    return path


def write_nifti_labels(
    labels: Any,
    affine: Any,
    path: str | Path,
    label_info: Sequence[Mapping[str, Any]] | None = None,
    *,
    model_name: str | None = None,
    model_version: str | None = None,
) -> Path:
    """Write a label map as a uint8 NIfTI file plus a JSON sidecar with the label names/colours.

    Args:
        labels: label map ``(I, J[, K])`` of values 0..255 (0 is background), MONAI axis order.
        affine: 4x4 RAS affine (MONAI / NIfTI convention) of the grid, millimetres.
        path: the ``.nii`` or ``.nii.gz`` file to write; the sidecar is ``<stem>.json`` beside it.
        label_info: ``[{"value", "name", "color"}, ...]`` (colour ``[r, g, b]`` 0..255).
        model_name, model_version: the model that made the labels, recorded in the sidecar.

    Returns:
        the path of the NIfTI file.

    Raises:
        InputError: wrong shape, values or affine; a path without a NIfTI extension.
        ProcessingError: the file cannot be written.
    """
    path = _check_path(path)
    arr = as_label_array(labels)
    aff = _check_affine(affine)
    specs = normalise_labels(label_info)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    img = _make_image(
        np.ascontiguousarray(arr, dtype=np.uint8),
        aff,
        "label",
        f"{SOFTWARE_NAME} {SOFTWARE_VERSION} labels",
    )
    img.set_data_dtype(np.uint8)
    sidecar = {
        "kind": "labels",
        "software": {"name": SOFTWARE_NAME, "version": SOFTWARE_VERSION},
        "model": {"name": model_name, "version": model_version},
        "labels": [{"value": 0, "name": "background", "color": [0, 0, 0]}]
        + [{"value": s.value, "name": s.name, "color": list(s.color)} for s in specs],
        "present": present_values(arr, background=False),
        "note": "AI result, not for diagnostic use",
    }
    _save(img, path)
    write_text_atomic(sidecar_path(path), json.dumps(sidecar, indent=2, sort_keys=True) + "\n")
    return path


def write_nifti_mask(
    labels: Any, value: int, affine: Any, path: str | Path, *, name: str | None = None
) -> Path:
    """Write the mask of one label, ``labels == value``, as a uint8 0/1 NIfTI file (no sidecar).

    One file per label (``--split-labels``) is what TotalSegmentator users expect; the grid and
    affine are those of ``labels`` (the input's).

    Raises:
        InputError: wrong shape, values or affine; a path without a NIfTI extension.
    """
    path = _check_path(path)
    arr = as_label_array(labels)
    aff = _check_affine(affine)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    mask = np.ascontiguousarray(arr == int(value), dtype=np.uint8)
    what = f"{name} (label {int(value)})" if name else f"label {int(value)}"
    img = _make_image(mask, aff, "label", f"{SOFTWARE_NAME} {SOFTWARE_VERSION} mask {what}")
    img.set_data_dtype(np.uint8)
    return _save(img, path)


def write_nifti_map(
    saliency: Any,
    affine: Any,
    path: str | Path,
    *,
    description: str = "saliency",
    exact: bool = False,
) -> Path:
    """Write a real-valued map (saliency, uncertainty) ``(I, J[, K])`` as a NIfTI file.

    By default the map is stored as 16-bit integers with the header's ``scl_slope`` /
    ``scl_inter`` spanning its range (nibabel, ITK/3D Slicer, SimpleITK and FSL apply them on
    reading): the values read back are within ``(max - min) / 131070`` of the map's, and the
    file is written several times faster than float32, whose low bits of a noisy map (a TTA
    variance) do not compress. ``exact=True`` writes float32 instead, and so does a constant
    map or one whose range is below about 1e-33.

    Args:
        saliency: the map, MONAI axis order, any real dtype.
        affine: 4x4 RAS affine of the grid.
        path: ``.nii`` or ``.nii.gz`` file.
        description: written to the header's ``descrip`` field (79 characters at most).
        exact: float32, the values bit for bit (as float32).

    Raises:
        InputError: wrong shape, non-finite values or affine; a path without a NIfTI extension.
    """
    path = _check_path(path)
    arr = as_numpy(saliency)
    if arr.ndim in (3, 4) and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim not in (2, 3):
        raise InputError(f"a map must have shape (I, J) or (I, J, K); found {arr.shape}")
    if not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
        raise InputError(f"a map must hold real numbers; found {arr.dtype}")
    arr = arr.astype(np.float32)
    if not np.all(np.isfinite(arr)):
        raise InputError("the map holds NaN or infinite values")
    aff = _check_affine(affine)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    descrip = f"{SOFTWARE_NAME} {SOFTWARE_VERSION} {description}"
    scaled = None if exact else _to_uint16(arr)
    if scaled is None:
        img = _make_image(np.ascontiguousarray(arr), aff, "none", descrip)
        img.set_data_dtype(np.float32)
        return _save(img, path)
    quantised, slope, inter = scaled
    img = _make_image(quantised, aff, "none", descrip)
    img.set_data_dtype(np.uint16)
    img.header.set_slope_inter(slope, inter)
    return _save(img, path)


_U16 = 65535


def _to_uint16(arr: np.ndarray) -> tuple[np.ndarray, float, float] | None:
    """``arr`` (float32) as uint16 ``q`` with ``inter + q * slope`` within half a step of it and
    inside ``[arr.min(), arr.max()]`` (slope and intercept are float32 in the header; the
    slope is rounded down so that the largest code does not read back above the maximum).

    None, to be written as float32, for a constant map (it compresses to almost nothing, and
    readers get a float map whatever its content) and for a range too small for a normal
    float32 slope."""
    lo, hi = float(arr.min()), float(arr.max())
    if not hi > lo:
        return None
    slope = np.float32((hi - lo) / _U16)
    while float(lo) + _U16 * float(slope) > hi:
        slope = np.nextafter(slope, np.float32(0))
    if not np.isfinite(slope) or slope < np.finfo(np.float32).tiny:
        return None
    codes = np.rint((arr.astype(np.float64) - lo) / float(slope))
    return np.clip(codes, 0, _U16).astype(np.uint16), float(slope), lo
