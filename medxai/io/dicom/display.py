"""The image a radiologist sees: the DICOM greyscale display pipeline for radiographs.

For a single-frame greyscale DICOM (DX, CR, MG, ... any bit depth), :func:`display_image` applies,
in the order PS3.3 C.11 and PS3.4 N.2.1 give:

1. **Modality LUT**: the Modality LUT Sequence when present, else Rescale Slope/Intercept
   (``pydicom.pixels.apply_modality_lut``).
2. **VOI LUT**: the VOI LUT Sequence when present, else the window (Window Center/Width, the
   ``voi_index``-th when there are several) with its VOI LUT Function (LINEAR, LINEAR_EXACT,
   SIGMOID) (``pydicom.pixels.apply_voi_lut``). Without either, the **full stored range**
   (``0 .. 2**BitsStored - 1``, or the signed range, through the Modality LUT) is shown.
3. The VOI output range (the window's output range as pydicom defines it, or ``0 .. 2**n - 1``
   for an ``n``-bit VOI LUT) is scaled to ``[0, 1]``.
4. **MONOCHROME1** is inverted (``1 - v``), so that 0 is black and 1 white, as displayed.

The result, :class:`DisplayImage`, holds the float image in ``[0, 1]`` (rows, columns), records
what was applied, and gives the 8-bit picture with :meth:`DisplayImage.to_uint8`
(``rint(255 * v)``): the same pixels a viewer's 8-bit export (or ``dcm2pnm`` with the same
window) shows, to within one grey level.

:func:`medxai.io.readers.load_image` uses this for radiographs (``display=None``, the default,
means: for modalities in :data:`RADIOGRAPH_MODALITIES`, single frame, greyscale), so that a model
trained on 8-bit display pictures (PNG exports) gets the same input from the DICOM. The image meta
then says ``intensity == "display"`` and ``display`` records the steps; see
:mod:`medxai.io.types`.

Physical pixel size of a projection radiograph: :func:`radiograph_spacing` takes Pixel Spacing
(calibrated, at the patient) when present, else Imager Pixel Spacing (at the detector) and reports
which one it used, with the Estimated Radiographic Magnification Factor and the spacing it implies
at the patient plane (``imager / factor``) when the file gives one.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from medxai.errors import CorruptInputError, UnsupportedInputError
from medxai.io.dicom.pixels import decode_stored

__all__ = [
    "RADIOGRAPH_MODALITIES",
    "DisplayImage",
    "RadiographSpacing",
    "display_image",
    "is_display_candidate",
    "radiograph_spacing",
]

#: Projection radiography modalities whose pixels are read as displayed (VOI applied) by default.
RADIOGRAPH_MODALITIES = ("CR", "DX", "MG", "IO", "PX", "RG")


@dataclass
class DisplayImage:
    """A greyscale DICOM frame as displayed.

    Attributes:
        pixels: float32 ``(rows, columns)`` in ``[0, 1]``; 0 is black, 1 white (MONOCHROME1
            already inverted).
        applied: the steps taken, plain values: ``modality_lut`` (``"rescale"``,
            ``"lut-sequence"`` or ``"none"``, with ``rescale_slope``/``rescale_intercept``),
            ``voi`` (``"window"``, ``"lut-sequence"`` or ``"full-range"``), ``window_center``,
            ``window_width``, ``voi_lut_function``, ``voi_explanation``, ``output_range`` (the VOI
            output range mapped to 0..1), ``inverted`` (MONOCHROME1), ``bits_stored``,
            ``photometric_interpretation``.
    """

    pixels: np.ndarray
    applied: dict[str, Any] = field(default_factory=dict)

    def to_uint8(self) -> np.ndarray:
        """The 8-bit display picture ``(rows, columns)``: ``rint(255 * pixels)``."""
        return np.rint(self.pixels * 255.0).astype(np.uint8)


def is_display_candidate(ds: Dataset) -> bool:
    """Whether :func:`medxai.io.readers.load_image` reads ``ds`` as displayed by default:
    a projection radiograph (:data:`RADIOGRAPH_MODALITIES`), one frame, greyscale."""
    modality = str(ds.get("Modality", "") or "").upper()
    pi = str(ds.get("PhotometricInterpretation", "") or "").upper()
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    spp = int(ds.get("SamplesPerPixel", 1) or 1)
    return (
        modality in RADIOGRAPH_MODALITIES
        and frames == 1
        and spp == 1
        and pi in ("MONOCHROME1", "MONOCHROME2")
    )


def _stored_range(ds: Dataset) -> tuple[int, int]:
    bits = int(ds.get("BitsStored", 0) or ds.get("BitsAllocated", 16) or 16)
    if int(ds.get("PixelRepresentation", 0) or 0) == 1:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def _valid_voi_lut(ds: Dataset) -> bool:
    seq = ds.get("VOILUTSequence")
    return bool(seq) and None not in (seq[0].get("LUTDescriptor"), seq[0].get("LUTData"))


def _valid_window(ds: Dataset) -> bool:
    return ds.get("WindowCenter") not in (None, "") and ds.get("WindowWidth") not in (None, "")


def _nth(value: Any, index: int) -> float:
    """The ``index``-th value of a (possibly multi-valued) DS element."""
    if isinstance(value, (list, tuple)) or hasattr(value, "__len__") and not isinstance(value, str):
        seq = list(value)
        return float(seq[min(index, len(seq) - 1)])
    return float(value)


def display_image(
    ds: Dataset,
    path: str | Path | None = None,
    *,
    frame: int = 0,
    voi_index: int = 0,
    stored: np.ndarray | None = None,
) -> DisplayImage:
    """Render one greyscale frame of ``ds`` as a radiologist sees it (see the module docstring).

    Args:
        ds: the data set (with its pixel data).
        path: the file, for messages.
        frame: 0-based frame of a multi-frame object.
        voi_index: which window (or VOI LUT) to use when the file offers several.
        stored: the stored values already decoded (as :func:`~medxai.io.dicom.pixels.decode_stored`
            returns them), to avoid decoding twice.

    Raises:
        UnsupportedInputError: the data set is not greyscale (RGB, YBR, palette colour).
        CorruptInputError: the pixel data cannot be decoded or the window is invalid.
    """
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    where = path if path is not None else getattr(ds, "filename", None)
    pi = str(ds.get("PhotometricInterpretation", "MONOCHROME2") or "MONOCHROME2").upper()
    spp = int(ds.get("SamplesPerPixel", 1) or 1)
    if spp != 1 or pi not in ("MONOCHROME1", "MONOCHROME2"):
        raise UnsupportedInputError(
            f"has Photometric Interpretation {pi} with {spp} sample(s) per pixel; the greyscale "
            "display pipeline (Modality LUT, VOI LUT) applies to MONOCHROME1/2 only",
            path=where,
            hint="read colour images with load_image(..., display=False)",
        )
    arr = decode_stored(ds, where) if stored is None else stored
    if arr.ndim == 3:  # (frames, rows, cols): greyscale multi-frame
        if not 0 <= frame < arr.shape[0]:
            raise UnsupportedInputError(
                f"has {arr.shape[0]} frames; frame {frame} was asked for", path=where
            )
        arr = arr[frame]
    applied: dict[str, Any] = {
        "photometric_interpretation": pi,
        "bits_stored": int(ds.get("BitsStored", 0) or 0),
    }
    if ds.get("ModalityLUTSequence"):
        applied["modality_lut"] = "lut-sequence"
    elif "RescaleSlope" in ds and "RescaleIntercept" in ds:
        applied.update(
            modality_lut="rescale",
            rescale_slope=float(ds.RescaleSlope),
            rescale_intercept=float(ds.RescaleIntercept),
        )
    else:
        applied["modality_lut"] = "none"
    with warnings.catch_warnings(), np.errstate(over="ignore", invalid="ignore"):
        warnings.simplefilter("ignore")
        values = apply_modality_lut(arr, ds)
        try:
            if _valid_voi_lut(ds):
                item = ds.VOILUTSequence[min(voi_index, len(ds.VOILUTSequence) - 1)]
                if not np.issubdtype(values.dtype, np.integer):
                    values = np.rint(values).astype(np.int64)
                out = apply_voi_lut(values, ds, index=min(voi_index, len(ds.VOILUTSequence) - 1))
                lo, hi = 0.0, float(2 ** int(item.LUTDescriptor[2]) - 1)
                applied.update(
                    voi="lut-sequence", voi_explanation=str(item.get("LUTExplanation", "") or "")
                )
            elif _valid_window(ds):
                out = apply_voi_lut(values, ds, index=voi_index, prefer_lut=False)
                ends = apply_voi_lut(np.array([-1e30, 1e30]), ds, index=voi_index, prefer_lut=False)
                lo, hi = float(ends[0]), float(ends[1])
                expl = ds.get("WindowCenterWidthExplanation")
                applied.update(
                    voi="window",
                    window_center=_nth(ds.WindowCenter, voi_index),
                    window_width=_nth(ds.WindowWidth, voi_index),
                    voi_lut_function=str(ds.get("VOILUTFunction", "") or "LINEAR"),
                    voi_explanation=str(_nth_str(expl, voi_index)),
                )
            else:
                out = values
                s_lo, s_hi = _stored_range(ds)
                if ds.get("ModalityLUTSequence"):
                    ends = apply_modality_lut(np.arange(s_lo, s_hi + 1), ds)
                else:
                    ends = apply_modality_lut(np.array([s_lo, s_hi], dtype=np.float64), ds)
                lo, hi = float(np.min(ends)), float(np.max(ends))
                applied["voi"] = "full-range"
        except (ValueError, NotImplementedError, TypeError, IndexError) as exc:
            raise CorruptInputError(
                f"its VOI LUT / window cannot be applied ({exc})",
                path=where,
                hint="the window attributes are invalid; fix or remove them "
                "(Window Center/Width, VOI LUT Sequence)",
            ) from exc
    if hi == lo:
        raise CorruptInputError(
            f"its display output range is empty ({lo} .. {hi})",
            path=where,
            hint="Bits Stored or the VOI LUT descriptor is wrong",
        )
    pixels = (np.asarray(out, dtype=np.float64) - lo) / (hi - lo)
    np.clip(pixels, 0.0, 1.0, out=pixels)
    inverted = pi == "MONOCHROME1"
    if inverted:
        pixels = 1.0 - pixels
    applied.update(output_range=[lo, hi], inverted=inverted)
    return DisplayImage(pixels=pixels.astype(np.float32), applied=applied)


def _nth_str(value: Any, index: int) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    seq = list(value)
    return str(seq[min(index, len(seq) - 1)]) if seq else ""


@dataclass(frozen=True)
class RadiographSpacing:
    """The physical pixel size of a projection radiograph.

    Attributes:
        spacing: ``(row, column)`` spacing in mm, from ``source``.
        source: the attribute used: ``"PixelSpacing"`` (calibrated at the patient),
            ``"ImagerPixelSpacing"`` (at the detector) or ``"NominalScannedPixelSpacing"``.
        magnification: Estimated Radiographic Magnification Factor, or ``None``.
        patient_plane_spacing: ImagerPixelSpacing / magnification when both are given (the
            spacing at the patient plane), else ``None``.
        calibration: Pixel Spacing Calibration Type (e.g. ``GEOMETRY``, ``FIDUCIAL``), or ``""``.
    """

    spacing: tuple[float, float]
    source: str
    magnification: float | None = None
    patient_plane_spacing: tuple[float, float] | None = None
    calibration: str = ""


def _pair(v: Any) -> tuple[float, float] | None:
    if v is None:
        return None
    try:
        if len(v) != 2:
            return None
        r, c = float(v[0]), float(v[1])
    except (TypeError, ValueError):
        return None
    return (r, c) if r > 0 and c > 0 else None


def radiograph_spacing(ds: Dataset) -> RadiographSpacing | None:
    """Which pixel spacing a radiograph has, and where it holds (see the module docstring);
    ``None`` when the file gives none."""
    mag_v = ds.get("EstimatedRadiographicMagnificationFactor")
    try:
        mag = float(mag_v) if mag_v not in (None, "") else None
    except (TypeError, ValueError):
        mag = None
    if mag is not None and mag <= 0:
        mag = None
    calib = str(ds.get("PixelSpacingCalibrationType", "") or "")
    for kw in ("PixelSpacing", "ImagerPixelSpacing", "NominalScannedPixelSpacing"):
        sp = _pair(ds.get(kw))
        if sp is None:
            continue
        patient = (sp[0] / mag, sp[1] / mag) if kw == "ImagerPixelSpacing" and mag else None
        return RadiographSpacing(sp, kw, mag, patient, calib)
    return None
