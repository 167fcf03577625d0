"""Derived DICOM objects as inputs: what a SEG, RTSTRUCT, Parametric Map or SR holds, and a SEG
or RTSTRUCT rasterised onto the grid of the image series it refers to.

- :func:`describe_derived` summarises a derived object's header (no pixels needed): segments,
  frames and referenced series of a SEG; ROIs and contour counts of an RTSTRUCT; quantity and grid
  of a Parametric Map; template, title and numeric measurements of an SR.
- :func:`rasterise_reference` turns a SEG (BINARY, FRACTIONAL at half the maximum, LABELMAP) or an
  RTSTRUCT (closed planar contours, filled) into a label map on the grid of the referenced series
  as :func:`medxai.io.readers.load_image` reads it: ``(1, I, J, K)``, the same RAS affine, each
  voxel holding the segment (or ROI) number, 0 for background. SEG frames are placed by their
  Plane Position, never by frame order: highdicom builds each segment's volume
  (``Segmentation.get_volume``) and matches it to the series geometry without resampling
  (``Volume.match_geometry``); where segments overlap, the higher number wins and a warning says
  so. RTSTRUCT contours are filled by ``skimage.draw.polygon2mask`` (even-odd rule on voxel
  centres).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from medxai.errors import SeriesError, UnsupportedInputError

__all__ = [
    "DERIVED_KINDS",
    "RasterisedReference",
    "derived_kind",
    "describe_derived",
    "rasterise_reference",
    "what_to_give_instead",
]

#: SOP Class UID -> short kind of derived object medxai understands.
DERIVED_KINDS = {
    "1.2.840.10008.5.1.4.1.1.66.4": "SEG",
    "1.2.840.10008.5.1.4.1.1.66.7": "SEG",  # Label Map Segmentation
    "1.2.840.10008.5.1.4.1.1.481.3": "RTSTRUCT",
    "1.2.840.10008.5.1.4.1.1.30": "PM",
    "1.2.840.10008.5.1.4.1.1.88.11": "SR",
    "1.2.840.10008.5.1.4.1.1.88.22": "SR",
    "1.2.840.10008.5.1.4.1.1.88.33": "SR",
    "1.2.840.10008.5.1.4.1.1.88.34": "SR",
    "1.2.840.10008.5.1.4.1.1.481.2": "RTDOSE",
    "1.2.840.10008.5.1.4.1.1.481.5": "RTPLAN",
}


def derived_kind(ds: Dataset) -> str | None:
    """``"SEG"``, ``"RTSTRUCT"``, ``"PM"``, ``"SR"``, ``"RTDOSE"``, ``"RTPLAN"`` or ``None``."""
    return DERIVED_KINDS.get(str(ds.get("SOPClassUID", "") or ""))


def _code(item: Any, kw: str) -> str:
    seq = item.get(kw) if item is not None else None
    return str(seq[0].get("CodeMeaning", "") or "") if seq else ""


def _referenced_series(ds: Dataset) -> list[str]:
    uids = [str(s.get("SeriesInstanceUID", "")) for s in ds.get("ReferencedSeriesSequence") or []]
    for fr in ds.get("ReferencedFrameOfReferenceSequence") or []:  # RTSTRUCT
        for st in fr.get("RTReferencedStudySequence") or []:
            for se in st.get("RTReferencedSeriesSequence") or []:
                uids.append(str(se.get("SeriesInstanceUID", "")))
    for ev in ds.get("CurrentRequestedProcedureEvidenceSequence") or []:  # SR
        for se in ev.get("ReferencedSeriesSequence") or []:
            uids.append(str(se.get("SeriesInstanceUID", "")))
    return [u for u in dict.fromkeys(uids) if u]


def _sr_measurements(items: Sequence[Any], out: list[dict[str, Any]], depth: int = 0) -> None:
    for it in items or []:
        if str(it.get("ValueType", "")) == "NUM":
            mv = (it.get("MeasuredValueSequence") or [None])[0]
            value = float(mv.NumericValue) if mv is not None and "NumericValue" in mv else None
            out.append(
                {
                    "name": _code(it, "ConceptNameCodeSequence"),
                    "value": value,
                    "unit": _code(mv, "MeasurementUnitsCodeSequence") if mv else "",
                }
            )
        if depth < 16 and it.get("ContentSequence"):
            _sr_measurements(it.ContentSequence, out, depth + 1)


def describe_derived(ds: Dataset) -> dict[str, Any] | None:
    """What a derived object holds, as plain values, or ``None`` when ``ds`` is not one."""
    kind = derived_kind(ds)
    if kind is None:
        return None
    out: dict[str, Any] = {
        "kind": kind,
        "sop_class": getattr(ds.get("SOPClassUID"), "name", str(ds.get("SOPClassUID", ""))),
        "modality": str(ds.get("Modality", "") or ""),
        "series_description": str(ds.get("SeriesDescription", "") or "").strip(),
        "frame_of_reference_uid": str(ds.get("FrameOfReferenceUID", "") or ""),
        "referenced_series": _referenced_series(ds),
    }
    if kind == "SEG":
        out["segmentation_type"] = str(ds.get("SegmentationType", "") or "")
        out["frames"] = int(ds.get("NumberOfFrames", 1) or 1)
        out["grid"] = [int(ds.get("Columns", 0) or 0), int(ds.get("Rows", 0) or 0)]
        out["segments"] = [
            {
                "number": int(s.get("SegmentNumber", 0) or 0),
                "label": str(s.get("SegmentLabel", "") or ""),
                "category": _code(s, "SegmentedPropertyCategoryCodeSequence"),
                "type": _code(s, "SegmentedPropertyTypeCodeSequence"),
                "algorithm": str(s.get("SegmentAlgorithmType", "") or ""),
            }
            for s in ds.get("SegmentSequence") or []
        ]
    elif kind == "RTSTRUCT":
        counts = {
            int(c.get("ReferencedROINumber", 0) or 0): c.get("ContourSequence") or []
            for c in ds.get("ROIContourSequence") or []
        }
        out["rois"] = [
            {
                "number": int(r.get("ROINumber", 0) or 0),
                "name": str(r.get("ROIName", "") or ""),
                "contours": len(counts.get(int(r.get("ROINumber", 0) or 0), [])),
                "geometric_types": sorted(
                    {
                        str(c.get("ContourGeometricType", ""))
                        for c in counts.get(int(r.get("ROINumber", 0) or 0), [])
                    }
                ),
            }
            for r in ds.get("StructureSetROISequence") or []
        ]
    elif kind == "PM":
        rwv = None
        for item_kw in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
            seq = ds.get(item_kw)
            if seq and seq[0].get("RealWorldValueMappingSequence"):
                rwv = seq[0].RealWorldValueMappingSequence[0]
                break
        quantity = ""
        if rwv is not None:
            for q in rwv.get("QuantityDefinitionSequence") or []:
                if "ConceptCodeSequence" in q:
                    quantity = _code(q, "ConceptCodeSequence")
            quantity = quantity or str(rwv.get("LUTExplanation", "") or rwv.get("LUTLabel", ""))
        out["quantity"] = quantity
        out["unit"] = _code(rwv, "MeasurementUnitsCodeSequence") if rwv is not None else ""
        out["frames"] = int(ds.get("NumberOfFrames", 1) or 1)
        out["grid"] = [int(ds.get("Columns", 0) or 0), int(ds.get("Rows", 0) or 0), out["frames"]]
        out["pixel_data"] = next(
            (kw for kw in ("FloatPixelData", "DoubleFloatPixelData", "PixelData") if kw in ds), ""
        )
    elif kind == "SR":
        tmpl = (ds.get("ContentTemplateSequence") or [None])[0]
        out["template"] = (
            f"{tmpl.get('MappingResource', '')} TID {tmpl.get('TemplateIdentifier', '')}".strip()
            if tmpl
            else ""
        )
        out["title"] = _code(ds, "ConceptNameCodeSequence")
        meas: list[dict[str, Any]] = []
        _sr_measurements(ds.get("ContentSequence") or [], meas)
        out["measurements"] = meas
    return out


def what_to_give_instead(ds: Dataset) -> str:
    """The hint for a derived object given where an image was expected."""
    kind = derived_kind(ds)
    refs = _referenced_series(ds)
    series = f" (Series Instance UID {refs[0]})" if refs else ""
    if kind in ("SEG", "RTSTRUCT"):
        return (
            f"give medxai the image series this {kind} was drawn on{series}; to score a model "
            f"or a label map against this {kind}, use it as the reference segmentation: "
            f"`medxai evaluate --model M SERIES --reference THIS_{kind}` or `medxai evaluate "
            f"LABELS THIS_{kind} --series SERIES` (it is rasterised onto that series' grid)"
        )
    if kind == "PM":
        return (
            f"a Parametric Map is a derived result (medxai writes them); give the image "
            f"series it was computed from{series}"
        )
    if kind == "SR":
        return f"an SR holds measurements, not pixels; give the image series it reports on{series}"
    if kind == "RTDOSE":
        return (
            "an RT Dose holds a dose grid computed by a treatment planning system, not an image "
            f"to segment; give the image series the plan was made on{series}"
        )
    if kind == "RTPLAN":
        return (
            "an RT Plan holds treatment beams and doses, no pixels; give the image series the "
            f"plan was made on{series}"
        )
    return f"give medxai the image series this object refers to{series}"


# ---------------------------------------------------------------------------------------------
# rasterisation
# ---------------------------------------------------------------------------------------------


@dataclass
class RasterisedReference:
    """A SEG or RTSTRUCT on its referenced series' grid.

    Attributes:
        labels: ``(1, I, J, K)`` int16 ``MetaTensor`` (the series' affine and meta): segment or ROI
            number per voxel, 0 background.
        names: number -> segment label or ROI name.
        warnings: overlaps, contours off the grid, ...
    """

    labels: Any
    names: dict[int, str]
    warnings: list[str] = field(default_factory=list)


def _series_lps(image: Any) -> np.ndarray:
    from medxai.io.geometry import ras_to_lps_affine

    return ras_to_lps_affine(np.asarray(image.affine, dtype=np.float64))


def _to_index(inv_lps: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """LPS points ``(N, 3)`` -> continuous voxel indices ``(N, 3)``."""
    h = np.c_[pts, np.ones(len(pts))]
    return (inv_lps @ h.T).T[:, :3]


def _rasterise_seg(
    ds: Dataset, image: Any, where: Any
) -> tuple[np.ndarray, dict[int, str], list[str]]:
    """The SEG's segments on the series grid: highdicom decodes each segment's frames into a
    volume (binary, fractional or label map) and matches it to the series geometry (axes
    permuted, flipped, cropped or padded, never resampled); where segments overlap the higher
    segment number is kept, with a warning."""
    import highdicom as hd

    shape = tuple(int(s) for s in image.shape[1:])
    if len(shape) == 2:
        shape = shape + (1,)
    # a label-map SEG's segment 0 is its background (highdicom writes one): not a label
    names = {
        int(s.SegmentNumber): str(s.get("SegmentLabel", "") or "")
        for s in ds.get("SegmentSequence") or []
        if int(s.SegmentNumber) != 0
    }
    seg = _highdicom_seg(ds, where)
    grid = hd.VolumeGeometry(_series_lps(image), shape, coordinate_system="PATIENT")
    cut = 0.0
    if str(ds.get("SegmentationType", "BINARY") or "BINARY").upper() == "FRACTIONAL":
        cut = 0.5 * float(ds.get("MaximumFractionalValue", 255))
    out = np.zeros(shape, dtype=np.int16)
    warnings: list[str] = []
    overlaps = 0
    for number in sorted(n for n in seg.segment_numbers if n > 0):  # 0: a label map's background
        on, outside = _segment_on_grid(seg, number, grid, cut, where)
        if outside:
            warnings.append(
                f"{outside} voxel(s) of segment {number} lie outside the series grid; left out"
            )
        overlaps += int(np.count_nonzero(on & (out > 0)))
        out[on] = number  # in increasing order: the higher number wins
    if overlaps:
        warnings.append(
            f"{overlaps} voxel(s) belong to more than one segment; the higher "
            "segment number is kept"
        )
    return out, names, warnings


def _highdicom_seg(ds: Dataset, where: Any) -> Any:
    import highdicom as hd

    try:
        return hd.seg.Segmentation.from_dataset(ds)
    except (AttributeError, KeyError, ValueError, TypeError) as exc:
        raise UnsupportedInputError(
            f"is a SEG highdicom cannot read ({type(exc).__name__}: {exc})",
            path=where,
            hint="check it with dciodvfy; medxai reads SEGs through highdicom",
        ) from exc


def _segment_on_grid(
    seg: Any, number: int, grid: Any, cut: float, where: Any
) -> tuple[np.ndarray, int]:
    """One segment's mask on the series grid and how many of its voxels fall outside it."""
    try:
        volume = seg.get_volume(
            segment_numbers=[number],
            combine_segments=False,
            allow_missing_positions=True,
            rescale_fractional=False,
        )
        placed = volume.match_geometry(grid)
    except (RuntimeError, ValueError) as exc:  # highdicom: no volume, or not on the series grid
        raise SeriesError(
            f"segment {number}'s frames cannot be placed on the series' voxel grid without "
            f"resampling (highdicom: {exc}): different orientation or pixel spacing, positions "
            "between voxels, or frames that form no regular volume",
            path=where,
            hint="medxai places SEG frames on the series grid without resampling; give the "
            "series the SEG was made on",
        ) from exc
    on = np.asarray(placed.array)[..., 0] > cut
    return on, int(np.count_nonzero(np.asarray(volume.array) > cut)) - int(on.sum())


def _fill_polygon(ij: np.ndarray, width: int, height: int) -> np.ndarray:
    """Boolean ``(width, height)`` mask of the voxels whose centres lie inside a closed polygon
    given in continuous (i, j) voxel indices: ``skimage.draw.polygon2mask`` (even-odd rule on
    voxel centres at integers; a centre exactly on the contour counts as inside)."""
    from skimage.draw import polygon2mask

    if len(ij) < 3:
        return np.zeros((width, height), dtype=bool)
    return polygon2mask((width, height), ij)


def _rasterise_rtstruct(
    ds: Dataset, image: Any, where: Any
) -> tuple[np.ndarray, dict[int, str], list[str]]:
    shape = tuple(int(s) for s in image.shape[1:])
    if len(shape) == 2:
        shape = shape + (1,)
    out = np.zeros(shape, dtype=np.int16)
    names = {
        int(r.ROINumber): str(r.get("ROIName", "") or "")
        for r in ds.get("StructureSetROISequence") or []
    }
    inv = np.linalg.inv(_series_lps(image))
    warnings: list[str] = []
    for roi in ds.get("ROIContourSequence") or []:
        number = int(roi.get("ReferencedROINumber", 0) or 0)
        mask = np.zeros(shape, dtype=bool)
        for c in roi.get("ContourSequence") or []:
            kind = str(c.get("ContourGeometricType", "CLOSED_PLANAR"))
            data = c.get("ContourData")
            if kind != "CLOSED_PLANAR" or not data:
                continue
            idx = _to_index(inv, np.asarray([float(v) for v in data]).reshape(-1, 3))
            k = float(np.median(idx[:, 2]))
            kk = round(k)
            if abs(kk - k) > 0.1 or not 0 <= kk < shape[2]:
                warnings.append(
                    f"a contour of ROI {number} ({names.get(number, '')}) is not on "
                    f"a slice of the series (k = {k:.2f}); left out"
                )
                continue
            mask[:, :, kk] ^= _fill_polygon(idx[:, :2], shape[0], shape[1])
        overlap = int(np.count_nonzero(mask & (out > 0)))
        if overlap:
            warnings.append(
                f"ROI {number} overlaps earlier ROIs in {overlap} voxel(s); the "
                "higher ROI number is kept"
            )
        out[mask] = np.maximum(out[mask], number)
    return out, names, warnings


def rasterise_reference(reference: str | Path | Dataset, series: Any) -> RasterisedReference:
    """Put a DICOM SEG or RTSTRUCT onto the grid of ``series`` (see the module docstring).

    Args:
        reference: the SEG or RTSTRUCT file (or data set).
        series: the referenced image series as :func:`medxai.io.readers.load_image` read it (the
            :class:`~medxai.io.types.LoadedImage` or its ``MetaTensor``).

    Raises:
        UnsupportedInputError: ``reference`` is neither a SEG nor an RTSTRUCT.
        SeriesError: it was not drawn on ``series``' grid (different Frame of Reference,
            orientation or spacing).
    """
    from monai.data import MetaTensor

    from medxai.io.dicom import read_header

    where = (
        reference if not isinstance(reference, Dataset) else getattr(reference, "filename", None)
    )
    ds = read_header(reference) if not isinstance(reference, Dataset) else reference
    kind = derived_kind(ds)
    if kind not in ("SEG", "RTSTRUCT"):
        raise UnsupportedInputError(
            f"is {'a DICOM ' + kind if kind else 'not a derived object'} "
            f"({getattr(ds.get('SOPClassUID'), 'name', ds.get('SOPClassUID', '?'))}), not a "
            "segmentation",
            path=where,
            hint="give a DICOM SEG or RTSTRUCT as the reference",
        )
    if isinstance(series, (str, Path)):
        raise TypeError("series must be read first: rasterise_reference(ref, load_image(path))")
    image = getattr(series, "image", series)
    for_ref = str(ds.get("FrameOfReferenceUID", "") or "")
    if not for_ref:
        fors = [
            str(f.get("FrameOfReferenceUID", ""))
            for f in ds.get("ReferencedFrameOfReferenceSequence") or []
        ]
        for_ref = fors[0] if fors else ""
    for_img = str(image.meta.get("frame_of_reference_uid", "") or "")
    notes: list[str] = []
    refers = str(image.meta.get("series_instance_uid", "") or "") in _referenced_series(ds)
    if for_ref and for_img and for_ref != for_img and refers:
        notes.append(
            f"the {kind} names Frame of Reference {for_ref}, the series {for_img}, but "
            "it references this series: placed by patient coordinates"
        )
    elif for_ref and for_img and for_ref != for_img:
        raise SeriesError(
            f"the {kind} is in Frame of Reference {for_ref}, the series in {for_img}",
            path=where,
            hint=f"give the series the {kind} was drawn on "
            f"({', '.join(_referenced_series(ds)) or 'see its references'})",
        )
    if kind == "SEG":
        labels, names, warnings = _rasterise_seg(ds, image, where)
    else:
        labels, names, warnings = _rasterise_rtstruct(ds, image, where)
    warnings = notes + warnings
    if len(image.shape) == 3:
        labels = labels[..., 0]
    meta = {k: v for k, v in image.meta.items() if k != "affine"}
    meta.update(reference_kind=kind, intensity="labels")
    tensor = MetaTensor(labels[None], affine=image.affine.clone(), meta=meta)
    return RasterisedReference(labels=tensor, names=names, warnings=warnings)
