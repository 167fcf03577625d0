"""DICOM Parametric Map of a float map (saliency, uncertainty) on the grid of its source images.

One Parametric Map (highdicom ``hd.pm.ParametricMap``, SOP class 1.2.840.10008.5.1.4.1.1.30) per
map, in one of two pixel encodings (``encoding``):

- ``float32`` (the default): FloatPixelData that *are* the map's values, with an identity Real
  World Value Mapping (slope 1, intercept 0);
- ``uint16``: unsigned 16-bit PixelData ``q`` with a Real World Value Mapping of slope
  ``(max - min) / 65535`` and intercept ``min`` (both FD, float64), so that ``q * slope +
  intercept`` is within half a step of the map's value (a constant map: slope 1, all zero). The
  PM IOD allows integer pixel data with a linear mapping; readers without float pixel data
  support (Orthanc's own preview, older viewers) show it.

Neither encoding makes OHIF 3.x (up to 3.13.2) show a multi-frame map: its Parametric Map loader
(``@cornerstonejs/adapters`` ``ParametricMap.insertPixelDataPlanar``) takes frame ``i`` at *byte*
offset ``i * rows * columns`` of a 2- or 4-byte typed array (``RangeError: start offset of
Float32Array should be a multiple of 4`` when ``rows * columns`` is not a multiple of the element
size, the wrong pixels otherwise), and it multiplies the values by 100 in an array of the pixel
data's own type (a uint16 code above 655 wraps). See docs/viewers.md.

In both encodings the mapping names the coded quantity (DCM 130403
"Gradient-weighted class activation" for Grad-CAM / Grad-CAM++, DCM 130404 "Saliency" for other
saliency methods, medxai's own code ``99MEDXAI`` / ``predictive-entropy`` for the TTA uncertainty)
and its unit (UCUM ``1``, no unit). Frame Anatomy (required by the IOD, and by dcmqi) copies the
source's AnatomicRegionSequence when it has one, else SCT 91723000 "Anatomical structure";
FrameLaterality is the source's laterality or ``U``.

The map comes in MONAI order ``(I, J[, K])`` (``I`` along columns, ``J`` along rows, ``K`` along
the source slices/frames in :class:`~medxai.io.types.DicomSource` order) and is transposed to
DICOM's frames x rows x columns, so that frame ``k`` is derived from (and references, in its
DerivationImageSequence) ``source.datasets[k]`` or frame ``source.frame_numbers[k]``.

Geometry:

- Sources with a Frame of Reference (CT/MR series, enhanced multi-frame objects): highdicom copies
  the source's Frame of Reference, plane positions, orientation and pixel spacing; the map lies on
  the source grid.
- Sources without one (a DX/CR radiograph, a photo's placeholder study, one ultrasound frame):
  the Parametric Map IOD requires a Frame of Reference and plane geometry (dciodvfy and dcmqi
  refuse the object without them), so the map gets a *new* Frame of Reference of its own (shared
  with nothing, so it places nothing relative to the patient), ImageOrientationPatient
  ``1\\0\\0\\0\\1\\0``, ImagePositionPatient ``0\\0\\k`` and the source's PixelSpacing (or
  ImagerPixelSpacing, else 1 mm). The pixel grid is still the source's pixel grid, and each frame
  references its source image. This is what the PM's FrameOfReference note in the docs says.

The algorithm is identified in ContentDescription, the Contributing Equipment item (model name,
version, SHA-256 of the weights, saliency method) and the mapping's LUTExplanation.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from medxai.errors import InputError, ProcessingError
from medxai.io.types import DicomSource
from medxai.io.writers._common import (
    NOT_FOR_DIAGNOSIS,
    SOFTWARE_NAME,
    SOFTWARE_VERSION,
    as_numpy,
    has_frame_of_reference,
    new_uid,
    now,
    save_dicom,
    series_number_for,
    source_proxy,
    usable_spacing,
)
from medxai.io.writers._highdicom import memoise_iod_lookups

memoise_iod_lookups()  # highdicom asks the same IOD questions for every object

__all__ = [
    "write_dicom_pm",
    "quantity_code",
    "PM_ENCODINGS",
    "DEFAULT_PM_SERIES_OFFSET",
    "MEDXAI_SCHEME",
]

#: Series number of a Parametric Map, when not given: the source's series number plus this.
DEFAULT_PM_SERIES_OFFSET = 3000
#: Coding scheme designator of medxai's own codes (private, "99" prefix as PS3.16 8.2 allows).
MEDXAI_SCHEME = "99MEDXAI"
#: Pixel encodings of :func:`write_dicom_pm`: float32 values, or uint16 codes with a linear mapping.
PM_ENCODINGS = ("float32", "uint16")
_U16 = 65535

_ANATOMY_FALLBACK = Code("91723000", "SCT", "Anatomical structure")
_ENTROPY = Code("predictive-entropy", MEDXAI_SCHEME, "Predictive entropy")
_GRADIENT_METHODS = ("gradcam", "gradcampp")


def quantity_code(quantity: str, method: str | None = None) -> Code:
    """The coded quantity of a map: ``"saliency"`` (per ``method``) or ``"uncertainty"``.

    Raises:
        InputError: another quantity.
    """
    if quantity == "uncertainty":
        return _ENTROPY
    if quantity == "saliency":
        if (method or "").lower() in _GRADIENT_METHODS:
            return codes.DCM.GradientWeightedClassActivation
        return codes.DCM.Saliency
    raise InputError(f"unknown map quantity {quantity!r}", hint="use 'saliency' or 'uncertainty'")


def _as_map(values: Any) -> np.ndarray:
    arr = as_numpy(values)
    if arr.ndim in (3, 4) and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3:
        raise InputError(f"a map must have shape (I, J) or (I, J, K); found {arr.shape}")
    if not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
        raise InputError(f"a map must hold real numbers; found {arr.dtype}")
    arr = arr.astype(np.float32)
    if not np.all(np.isfinite(arr)):
        raise InputError("the map holds NaN or infinite values; a Parametric Map cannot hold them")
    return arr


def _frames(arr: np.ndarray, source: DicomSource) -> np.ndarray:
    """``(I, J, K)`` map -> ``(frames, rows, columns)`` float32 in source order, checked."""
    first = source.first
    k = len(source.frame_numbers or []) if source.is_multiframe else len(source.datasets)
    expected = (int(first.Columns), int(first.Rows), k)
    if arr.shape != expected:
        raise InputError(
            f"the map has shape {arr.shape} but the DICOM source is {expected} "
            "(columns, rows, slices/frames)",
            path=source.paths[0] if source.paths else None,
            hint="pass the map on the input grid, in MONAI order (I, J, K)",
        )
    frames = np.ascontiguousarray(np.transpose(arr, (2, 1, 0)))
    if source.is_multiframe:
        nframes = int(first.get("NumberOfFrames", 1) or 1)
        if sorted(int(f) for f in source.frame_numbers or []) != list(range(1, nframes + 1)):
            raise InputError(
                f"a Parametric Map of a multi-frame object needs all its {nframes} frames",
                path=source.paths[0] if source.paths else None,
            )
        full = np.zeros((nframes,) + frames.shape[1:], dtype=np.float32)
        for index, frame in enumerate(source.frame_numbers or []):
            full[int(frame) - 1] = frames[index]
        frames = full
    return frames


def _own_geometry(proxies: list[Dataset]) -> None:
    """Give source headers without a Frame of Reference the PM's own pixel-grid geometry."""
    uid = new_uid()
    for k, proxy in enumerate(proxies):
        spacing = next(
            (
                v
                for v in (proxy.get("PixelSpacing"), proxy.get("ImagerPixelSpacing"))
                if usable_spacing(v)
            ),
            [1, 1],
        )
        proxy.FrameOfReferenceUID = uid
        proxy.PixelSpacing = list(spacing)
        proxy.SliceThickness = 1
        nframes = int(proxy.get("NumberOfFrames", 1) or 1)
        if nframes > 1:
            _multiframe_geometry(proxy, nframes, spacing)
        else:
            proxy.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
            proxy.ImagePositionPatient = [0, 0, k]


def _multiframe_geometry(proxy: Dataset, nframes: int, spacing: Sequence[Any]) -> None:
    shared = Dataset()
    orientation = Dataset()
    orientation.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    shared.PlaneOrientationSequence = [orientation]
    measures = Dataset()
    measures.PixelSpacing = list(spacing)
    measures.SliceThickness = 1
    shared.PixelMeasuresSequence = [measures]
    proxy.SharedFunctionalGroupsSequence = [shared]
    per_frame = []
    for index in range(nframes):
        position = Dataset()
        position.ImagePositionPatient = [0, 0, index]
        item = Dataset()
        item.PlanePositionSequence = [position]
        per_frame.append(item)
    proxy.PerFrameFunctionalGroupsSequence = per_frame
    for kw in ("ImagePositionPatient", "ImageOrientationPatient"):
        if kw in proxy:
            delattr(proxy, kw)


def _frame_anatomy(first: Dataset) -> Dataset:
    item = Dataset()
    region = first.get("AnatomicRegionSequence")
    if region:
        item.AnatomicRegionSequence = [copy.deepcopy(region[0])]
    else:
        item.AnatomicRegionSequence = [hd.sr.CodedConcept.from_code(_ANATOMY_FALLBACK)]
    laterality = str(first.get("ImageLaterality") or first.get("Laterality") or "")
    item.FrameLaterality = laterality if laterality in ("R", "L", "B") else "U"
    return item


def _quantise(frames: np.ndarray) -> tuple[np.ndarray, float, float]:
    """float frames -> (uint16 codes, slope, intercept): ``codes * slope + intercept`` is within
    half a step (``slope / 2``) of ``frames``; a constant map gets slope 1 and codes 0."""
    lo, hi = float(frames.min()), float(frames.max())
    slope = (hi - lo) / _U16 if hi > lo else 1.0
    if not (np.isfinite(slope) and slope > 0):
        slope = 1.0
    codes = np.rint((frames.astype(np.float64) - lo) / slope)
    return np.clip(codes, 0, _U16).astype(np.uint16), slope, lo


def _window(frames: np.ndarray) -> hd.VOILUTTransformation:
    lo, hi = float(frames.min()), float(frames.max())
    width = hi - lo if hi > lo else 1.0
    # LINEAR_EXACT: the window may be narrower than 1 (a saliency map spans 0..1)
    return hd.VOILUTTransformation(
        window_center=lo + width / 2, window_width=width, voi_lut_function="LINEAR_EXACT"
    )


def _store_frames_along_normal(pm: hd.pm.ParametricMap) -> None:
    """Store the frames in ascending order along the slice normal (the source series order).

    highdicom stores them the other way round; dcmqi's paramap2itkimage (1.5) stacks the frames in
    stored order from the lowest position, so it would read them upside down. Each frame keeps
    its own functional groups (position, source reference, dimension index values).
    """
    per_frame = list(pm.PerFrameFunctionalGroupsSequence)
    if len(per_frame) < 2 or "PlanePositionSequence" not in per_frame[0]:
        return
    iop = np.asarray(
        pm.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0].ImageOrientationPatient,
        dtype=float,
    )
    normal = np.cross(iop[:3], iop[3:])
    distance = [
        float(
            np.dot(
                normal, np.asarray(item.PlanePositionSequence[0].ImagePositionPatient, dtype=float)
            )
        )
        for item in per_frame
    ]
    order = np.argsort(distance, kind="stable")
    if np.array_equal(order, np.arange(len(order))):
        return
    rows, cols = int(pm.Rows), int(pm.Columns)
    keyword, dtype = ("FloatPixelData", "<f4") if "FloatPixelData" in pm else ("PixelData", "<u2")
    pixels = np.frombuffer(pm[keyword].value, dtype=dtype).reshape(len(per_frame), rows, cols)
    setattr(pm, keyword, np.ascontiguousarray(pixels[order]).tobytes())
    pm.PerFrameFunctionalGroupsSequence = [per_frame[i] for i in order]


def write_dicom_pm(
    values: Any,
    source: DicomSource,
    path: str | Path,
    *,
    model_name: str,
    model_version: str,
    weights_sha256: str | None = None,
    method: str | None = None,
    quantity: str = "saliency",
    label_name: str | None = None,
    series_number: int | None = None,
    series_description: str | None = None,
    instance_number: int = 1,
    encoding: str = "float32",
) -> Path:
    """Write ``values`` as a DICOM Parametric Map on the grid of ``source``.

    Args:
        values: the map ``(I, J[, K])`` (a leading channel of 1 is dropped), any real dtype;
            written as float32, unscaled (the stored value is the map's value), or as uint16
            codes with a Real World Value Mapping (see ``encoding``).
        source: the DICOM images the map was computed on (for a photo, the placeholder study
            :func:`~medxai.io.writers.dicom_sc.create_photo_study` returned).
        path: the file to write.
        model_name, model_version, weights_sha256: the model, recorded with the saliency method
            in ContentDescription and the Contributing Equipment.
        method: the saliency method (``gradcam``, ``occlusion``, ...; or the uncertainty method).
        quantity: ``"saliency"`` or ``"uncertainty"`` (selects the coded quantity).
        label_name: the label the map explains, named in the series description and mapping.
        series_number: of the new series (default: source series number + 3000).
        series_description: of the new series (default names the map and says it is an AI
            result not for diagnostic use).
        instance_number: of the instance.
        encoding: ``"float32"`` (FloatPixelData, exact) or ``"uint16"`` (PixelData, the mapping's
            slope and intercept give the values within half a step); see the module docstring.

    Returns:
        the path written.

    Raises:
        InputError: a map that does not fit the source, non-finite values, an unknown quantity,
            a source header without the UIDs to reference.
        ProcessingError: highdicom refuses the input, or the file cannot be written.
    """
    code = quantity_code(quantity, method)
    if encoding not in PM_ENCODINGS:
        raise InputError(
            f"unknown Parametric Map encoding {encoding!r}", hint=f"use one of {PM_ENCODINGS}"
        )
    if not source.datasets:
        raise InputError("the DICOM source holds no dataset")
    frames = _frames(_as_map(values), source)
    proxies = [source_proxy(ds, light=k > 0) for k, ds in enumerate(source.datasets)]
    if not has_frame_of_reference(proxies[0]):
        _own_geometry(proxies)
    what = f"{code.meaning.lower()}{f' of {label_name}' if label_name else ''}"
    pixels: np.ndarray = frames
    value_range: tuple[float, float] | tuple[int, int] = (float(frames.min()), float(frames.max()))
    slope, intercept = 1.0, 0.0
    if encoding == "uint16":
        pixels, slope, intercept = _quantise(frames)
        value_range = (int(pixels.min()), int(pixels.max()))
    mapping = hd.pm.RealWorldValueMapping(
        lut_label=quantity.upper()[:16],
        lut_explanation=f"{what} ({method or quantity}), no unit"[:64],
        unit=codes.UCUM.NoUnits,
        value_range=value_range,
        slope=slope,
        intercept=intercept,
        quantity_definition=code,
    )
    identity = (
        f"model {model_name} {model_version}, weights sha256 {weights_sha256 or 'unknown'}"
        f", method {method or 'unknown'}"
    )
    equipment = hd.ContributingEquipment(
        manufacturer=SOFTWARE_NAME,
        purpose_of_reference=codes.DCM.ProcessingEquipment,
        manufacturer_model_name=SOFTWARE_NAME,
        software_versions=SOFTWARE_VERSION,
        contribution_datetime=now(),
        contribution_description=f"AI {quantity} map: {identity}"[:1024],
    )
    description = series_description or f"medxai {what} - {NOT_FOR_DIAGNOSIS}"
    try:
        pm = hd.pm.ParametricMap(
            source_images=proxies,
            pixel_array=pixels,
            series_instance_uid=new_uid(),
            series_number=series_number_for(series_number, proxies[0], DEFAULT_PM_SERIES_OFFSET),
            sop_instance_uid=new_uid(),
            instance_number=int(instance_number),
            manufacturer=SOFTWARE_NAME,
            manufacturer_model_name=SOFTWARE_NAME,
            software_versions=SOFTWARE_VERSION,
            device_serial_number="none",
            contains_recognizable_visual_features=False,
            real_world_value_mappings=[mapping],
            voi_lut_transformations=[_window(pixels)],
            content_label=quantity.upper()[:16],
            content_description=f"{model_name} {model_version} {method or quantity}"[:64],
            content_creator_name=f"{SOFTWARE_NAME.upper()}^",
            contributing_equipment=[equipment],
            series_description=description[:64],
        )
    except (ValueError, TypeError, AttributeError, KeyError, RuntimeError) as exc:
        raise ProcessingError(
            f"highdicom cannot build a Parametric Map for this source ({exc})",
            path=source.paths[0] if source.paths else None,
        ) from exc
    _store_frames_along_normal(pm)
    pm.SharedFunctionalGroupsSequence[0].FrameAnatomySequence = [_frame_anatomy(source.first)]
    pm.DerivationDescription = (
        f"{what} computed by {identity} with {SOFTWARE_NAME} "
        f"{SOFTWARE_VERSION}; {NOT_FOR_DIAGNOSIS}"[:1024]
    )
    return save_dicom(pm, path)
