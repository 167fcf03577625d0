"""DICOM Segmentation (SEG) of a label map, referencing the images it was computed from.

The label map comes in MONAI order ``(I, J[, K])`` (``i`` along columns, ``j`` along rows, ``k``
along the source slices or frames in :class:`~medxai.io.types.DicomSource` order); it is
transposed to DICOM's ``frames x rows x columns`` so that SEG frame data for slice ``k`` is derived
from ``source.datasets[k]`` (a series) or from frame ``source.frame_numbers[k]`` (a multi-frame
object). highdicom (``hd.seg.Segmentation``) builds the object: BINARY, one segment per non-zero
label of ``label_info`` (segment numbers 1..N in order of label value; the label value is kept in
each segment's SegmentDescription), coded category/type, AUTOMATIC algorithm identification
(family "Artificial Intelligence", name and version of the model).

Sources, and what is done for each:

- CT/MR series, single-frame files, enhanced multi-frame objects (with a Frame of Reference):
  highdicom copies the plane positions/orientation and Frame of Reference from the source; the SEG
  lies on the source grid.
- Pictures without a Frame of Reference (Secondary Capture, VL Photographic, X-ray, a single
  ultrasound frame): no Frame of Reference is invented; the frame references the source image
  (DerivationImageSequence) and PatientOrientation is copied (empty when the source has none).
- Multi-frame objects without a Frame of Reference (ultrasound cine, XA): highdicom 0.28 refuses
  them ("Only a single frame is supported when the source image has no Frame of Reference UID",
  highdicom issue #284). medxai builds the object with highdicom on a copy of the source header
  given a temporary frame index geometry, then removes every trace of it (Frame of Reference, plane
  position/orientation, pixel measures, 3D organisation) and indexes the frames by
  FrameContentSequence > TemporalPositionIndex = source frame number; each frame references its
  source frame. No geometry is written.

Empty masks: segments without any voxel get no frames (``omit_empty_frames``); when the whole mask
is empty highdicom keeps every frame (all zero), so the SEG is still valid and says "nothing found"
for every described label.

Default type: BINARY (``seg_type="binary"``), measured against LABELMAP (docs/viewers.md,
``scripts/measure_viewer_objects.py``). dcmqi 1.5.7, highdicom and pydicom decode both exactly,
including 1-bit frames that do not start on a byte (a 35 x 51 frame is 1785 bits; the standard
packs frames without padding). OHIF 3.x mis-reads those frames and draws LABELMAP correctly, but
LABELMAP is a DICOM 2024c SOP class that older validators (Debian 12's dciodvfy), PACS and readers
do not know, so it stays an option (``--seg-type labelmap``) rather than the default. A SEG of a
picture (no Frame of Reference) is valid but OHIF 3.x cannot show it (it needs plane geometry);
the SC overlay is the way to see it there.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
from highdicom.spatial import get_image_coordinate_system
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from medxai.choices import SEG_TYPES
from medxai.errors import InputError, ProcessingError, UnsupportedInputError
from medxai.io.types import DicomSource
from medxai.io.writers._common import (
    NOT_FOR_DIAGNOSIS,
    SOFTWARE_NAME,
    SOFTWARE_VERSION,
    LabelSpec,
    as_label_array,
    as_numpy,
    first_path,
    has_frame_of_reference,
    new_uid,
    normalise_labels,
    save_dicom,
    series_number_for,
    source_grid,
    source_proxy,
)
from medxai.io.writers._highdicom import memoise_iod_lookups
from medxai.labelmaps import present_values

memoise_iod_lookups()  # highdicom asks the same IOD questions for every object

_is_multiframe_iod: Callable[[Any], Any] | None
try:  # private helper of highdicom: whether the SOP class's IOD allows several frames
    from highdicom._standard_utils import is_multiframe_image as _is_multiframe_iod
except ImportError:  # pragma: no cover - other highdicom versions
    _is_multiframe_iod = None


def _uid_name(uid: str) -> str:
    name = getattr(pydicom.uid.UID(str(uid)), "name", "")
    return name or str(uid)


__all__ = [
    "dicom_seg_dataset",
    "write_dicom_seg",
    "segment_codes",
    "segmentation_type",
    "SegIdentity",
    "DEFAULT_SEG_SERIES_OFFSET",
    "FRACTIONAL_MAX",
]

#: Series number of a SEG, when not given: the source's series number plus this.
DEFAULT_SEG_SERIES_OFFSET = 1000
#: MaximumFractionalValue of a FRACTIONAL SEG: a probability p is stored as round(255 p).
FRACTIONAL_MAX = 255

_LESION_WORDS = re.compile(
    r"lesion|tumou?r|nodule|cancer|carcinoma|melanoma|naevus|nevus|mass|metasta|neoplasm|polyp"
    r"|cyst",
    re.IGNORECASE,
)


def _code(value: Any, what: str) -> Code | hd.sr.CodedConcept:
    """A coded concept from a pydicom Code, a dict ``{value, scheme, meaning}`` or a triple."""
    if isinstance(value, (Code, hd.sr.CodedConcept)):
        return value
    if isinstance(value, Mapping):
        try:
            return Code(
                str(value["value"]),
                str(value.get("scheme") or value.get("scheme_designator")),
                str(value["meaning"]),
            )
        except KeyError as exc:
            raise InputError(
                f"{what} code {value!r} needs 'value', 'scheme' and 'meaning'"
            ) from exc
    if isinstance(value, (list, tuple)) and len(value) == 3:
        return Code(str(value[0]), str(value[1]), str(value[2]))
    raise InputError(
        f"{what} code {value!r} is not a Code, a dict (value, scheme, meaning) or "
        "a (value, scheme, meaning) triple"
    )


def segment_codes(spec: LabelSpec) -> tuple[Any, Any]:
    """Segmented property (category, type) for a label.

    ``label_info`` entries may carry ``"category"`` and ``"type"`` codes (a dict with ``value``,
    ``scheme``, ``meaning``, a triple, or a pydicom ``Code``). Otherwise: SCT "Morphologically
    Abnormal Structure" / "Lesion" for a name that says lesion, tumour, nodule, ...; SCT
    "Anatomical Structure" / the organ for a name with a word of :data:`_ANATOMY` (lungs, lung_left,
    hippocampus anterior, spleen, liver, kidney, ...); SCT "Tissue" / "Tissue" for anything else
    (the documented fallback; CID 7150 / CID 7151).
    """
    if spec.category is not None or spec.type is not None:
        if spec.category is None or spec.type is None:
            raise InputError(
                f"label {spec.value} ({spec.name}) gives only one of 'category' "
                "and 'type'; give both"
            )
        return _code(spec.category, "category"), _code(spec.type, "type")
    if _LESION_WORDS.search(spec.name):
        return codes.SCT.MorphologicallyAbnormalStructure, codes.SCT.Lesion
    organ = _anatomy_code(spec.name)
    if organ is not None:
        return codes.SCT.AnatomicalStructure, organ
    return codes.SCT.Tissue, codes.SCT.Tissue


#: Anatomy recognised in label names (a whole word, singular or plural, any case; ``_`` and
#: ``-`` separate words): SNOMED CT codes as pydicom's code dictionary spells them.
_ANATOMY = {
    "lung": codes.SCT.Lung,
    "hippocampus": codes.SCT.Hippocampus,
    "spleen": codes.SCT.Spleen,
    "liver": codes.SCT.Liver,
    "kidney": codes.SCT.Kidney,
    "prostate": codes.SCT.Prostate,
    "brain": codes.SCT.Brain,
    "heart": codes.SCT.Heart,
    "pancreas": codes.SCT.Pancreas,
    "skin": codes.SCT.Skin,
    "aorta": codes.SCT.Aorta,
    "stomach": codes.SCT.Stomach,
    "gallbladder": codes.SCT.Gallbladder,
    "esophagus": codes.SCT.Esophagus,
}


def _anatomy_code(name: str) -> Code | None:
    for word in re.split(r"[\s_\-]+", name.lower()):
        for candidate in (word, word[:-1] if word.endswith("s") else word):
            if candidate in _ANATOMY:
                return _ANATOMY[candidate]
    return None


def _segment_descriptions(
    specs: Sequence[LabelSpec], model_name: str, model_version: str
) -> list[hd.seg.SegmentDescription]:
    algorithm = hd.AlgorithmIdentificationSequence(
        name=model_name[:64],
        version=model_version[:64],
        family=codes.cid7162.ArtificialIntelligence,
        source=SOFTWARE_NAME,
    )
    out = []
    for number, spec in enumerate(specs, start=1):
        category, prop_type = segment_codes(spec)
        desc = hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=spec.name[:64],
            segmented_property_category=category,
            segmented_property_type=prop_type,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            display_color=hd.color.CIELabColor.from_rgb(*spec.color),
        )
        desc.SegmentDescription = f"label value {spec.value}"
        out.append(desc)
    return out


def _check_source(source: DicomSource) -> None:
    if not source.datasets:
        raise InputError("the DICOM source holds no dataset")
    if source.is_multiframe:
        if len(source.datasets) != 1:
            raise InputError(
                "a multi-frame DICOM source must hold exactly one dataset; found "
                f"{len(source.datasets)}"
            )
        nframes = int(source.first.get("NumberOfFrames", 1) or 1)
        sop_class = source.first.get("SOPClassUID", "")
        if nframes > 1 and _is_multiframe_iod is not None and sop_class:
            try:
                allowed = _is_multiframe_iod(source.first)
            except (KeyError, AttributeError):
                allowed = True  # a SOP class highdicom does not know: let highdicom decide
            if not allowed:
                raise UnsupportedInputError(
                    f"holds {nframes} frames but its SOP class ({_uid_name(sop_class)}) is "
                    "a single-frame one; a DICOM SEG cannot reference frames of such a "
                    "non-conformant object",
                    path=first_path(source),
                    hint="convert it to single-frame files or an enhanced multi-frame object "
                    "(e.g. with dcmtk or emf2sf/sf2emf), or use the NIfTI output",
                )
        bad = [f for f in source.frame_numbers or [] if not 1 <= int(f) <= nframes]
        if bad:
            raise InputError(
                f"frame numbers {bad[:5]} are outside 1..{nframes}",
                path=first_path(source),
            )


def _slice_thickness_fix(proxies: list[Dataset]) -> None:
    """highdicom reads SliceThickness of single-frame sources; derive it when absent."""
    missing = [p for p in proxies if "SliceThickness" not in p or p.SliceThickness in (None, "")]
    if not missing or "ImagePositionPatient" not in proxies[0]:
        return
    thickness: float | None = None
    if len(proxies) > 1 and "ImageOrientationPatient" in proxies[0]:
        iop = np.asarray(proxies[0].ImageOrientationPatient, dtype=float)
        normal = np.cross(iop[:3], iop[3:])
        pos = sorted(
            float(np.dot(normal, np.asarray(p.ImagePositionPatient, float))) for p in proxies
        )
        steps = np.diff(pos)
        steps = steps[steps > 1e-6]
        if steps.size:
            thickness = float(np.median(steps))
    for p in missing:
        p.SliceThickness = thickness if thickness is not None else None


def _placeholder_geometry(proxy: Dataset) -> None:
    """Give a multi-frame header without Frame of Reference a temporary frame-index geometry."""
    nframes = int(proxy.get("NumberOfFrames", 1) or 1)
    proxy.FrameOfReferenceUID = new_uid()
    shared = Dataset()
    orientation = Dataset()
    orientation.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    shared.PlaneOrientationSequence = [orientation]
    measures = Dataset()
    measures.PixelSpacing = [1, 1]
    measures.SliceThickness = 1
    shared.PixelMeasuresSequence = [measures]
    proxy.SharedFunctionalGroupsSequence = [shared]
    per_frame = []
    for index in range(nframes):
        item = Dataset()
        position = Dataset()
        position.ImagePositionPatient = [0, 0, index]
        item.PlanePositionSequence = [position]
        per_frame.append(item)
    proxy.PerFrameFunctionalGroupsSequence = per_frame
    for kw in ("ImagePositionPatient", "ImageOrientationPatient"):
        if kw in proxy:
            delattr(proxy, kw)


def _remove_placeholder_geometry(seg: hd.seg.Segmentation) -> None:
    """Undo :func:`_placeholder_geometry` in the built SEG; index frames by source frame number."""
    for kw in ("FrameOfReferenceUID", "PositionReferenceIndicator", "DimensionOrganizationType"):
        if kw in seg:
            delattr(seg, kw)
    shared = seg.SharedFunctionalGroupsSequence[0]
    for kw in ("PlaneOrientationSequence", "PixelMeasuresSequence"):
        if kw in shared:
            delattr(shared, kw)
    position_tag = tag_for_keyword("ImagePositionPatient")
    dim_position = None
    for i, item in enumerate(seg.DimensionIndexSequence):
        if item.DimensionIndexPointer == position_tag:
            item.DimensionIndexPointer = tag_for_keyword("TemporalPositionIndex")
            item.FunctionalGroupPointer = tag_for_keyword("FrameContentSequence")
            item.DimensionDescriptionLabel = "Source Frame Number"
            dim_position = i
    if dim_position is None:  # pragma: no cover - highdicom always indexes the position
        raise ProcessingError("unexpected SEG layout from highdicom: no position dimension")
    for item in seg.PerFrameFunctionalGroupsSequence:
        frame = int(item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedFrameNumber)
        if "PlanePositionSequence" in item:
            del item.PlanePositionSequence
        content = item.FrameContentSequence[0]
        content.TemporalPositionIndex = frame
        if len(seg.DimensionIndexSequence) == 1:  # LABELMAP: no segment dimension
            content.DimensionIndexValues = frame
            continue
        values = list(content.DimensionIndexValues)
        values[dim_position] = frame
        content.DimensionIndexValues = values


@dataclass(frozen=True)
class SegIdentity:
    """Who made a SEG and where it goes: the model (algorithm name and version of every
    segment) and the new series and instance."""

    model_name: str
    model_version: str
    series_number: int | None = None
    series_description: str = f"medxai segmentation - {NOT_FOR_DIAGNOSIS}"
    instance_number: int = 1
    content_label: str = "MEDXAI"


def segmentation_type(seg_type: str) -> hd.seg.SegmentationTypeValues:
    """highdicom's SegmentationType for ``--seg-type`` (``binary``, ``labelmap``,
    ``fractional``).

    Raises:
        InputError: an unknown type.
        UnsupportedInputError: ``labelmap`` with a highdicom older than 0.24 (the first that
            writes the Label Map Segmentation SOP class of DICOM 2024c).
    """
    if seg_type not in SEG_TYPES:
        raise InputError(
            f"unknown SEG type {seg_type!r}", hint=f"use one of {', '.join(SEG_TYPES)}"
        )
    value = getattr(hd.seg.SegmentationTypeValues, seg_type.upper(), None)
    if value is None:
        raise UnsupportedInputError(
            f"the installed highdicom {hd.__version__} cannot write a {seg_type.upper()} SEG",
            hint="install highdicom >= 0.24 (LABELMAP segmentations), or use --seg-type binary",
        )
    return value


def _checked_labels(labels: Any, source: DicomSource) -> np.ndarray:
    """The label map as uint8 ``(I, J, K)``, checked against the source grid."""
    arr = as_label_array(labels)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    expected = source_grid(source)
    mosaic = not source.is_multiframe and len(source.datasets) == 1 and arr.shape[2] > 1
    if mosaic and arr.shape[:2] == expected[:2]:
        raise UnsupportedInputError(
            f"the labels have {arr.shape[2]} slices but the source is one single-frame image "
            "(a Siemens mosaic?); a DICOM SEG cannot reference slices inside one frame",
            path=first_path(source),
            hint="use the NIfTI output, or convert the mosaic to single-slice files",
        )
    if arr.shape != expected:
        raise InputError(
            f"the label map has shape {arr.shape} but the DICOM source is {expected} "
            "(columns, rows, slices/frames)",
            path=first_path(source),
            hint="pass the labels on the input grid, in MONAI order (I, J, K)",
        )
    return arr


def _checked_specs(label_info: Sequence[Mapping[str, Any]], arr: np.ndarray) -> list[LabelSpec]:
    """The described labels; every value present in ``arr`` must be one of them."""
    specs = normalise_labels(label_info)
    if not specs:
        raise InputError("label_info describes no non-zero label; a SEG needs at least one segment")
    present = set(present_values(arr, background=False))
    undescribed = sorted(present - {s.value for s in specs})
    if undescribed:
        raise InputError(f"label values {undescribed} are in the mask but not in label_info")
    return specs


def _label_frames(arr: np.ndarray, specs: Sequence[LabelSpec]) -> np.ndarray:
    """Label values -> segment numbers 1..N (in order of value), as frames (K, rows, columns)."""
    lut = np.zeros(256, dtype=np.uint8)
    for number, spec in enumerate(specs, start=1):
        lut[spec.value] = number
    return lut[np.transpose(arr, (2, 1, 0))]


def _fractional_frames(
    probabilities: Any, arr: np.ndarray, specs: Sequence[LabelSpec]
) -> np.ndarray:
    """Per-label probabilities ``(C, I, J[, K])`` (channel = label value) -> stacked segments
    (K, rows, columns, N) float32 in 0..1."""
    if probabilities is None:
        raise InputError(
            "a FRACTIONAL SEG needs the label probabilities",
            hint="pass probabilities=prediction.probabilities, or use seg_type='binary'",
        )
    prob = as_numpy(probabilities).astype(np.float32, copy=False)
    if prob.ndim == arr.ndim:  # 2D maps (C, I, J) for a single image
        prob = prob[..., None]
    top = max(spec.value for spec in specs)
    if prob.ndim != 4 or prob.shape[1:] != arr.shape or prob.shape[0] <= top:
        raise InputError(
            f"the probabilities have shape {prob.shape}; a FRACTIONAL SEG needs "
            f"(C, {', '.join(map(str, arr.shape))}) with a channel for each label value "
            f"0..{top}"
        )
    stacked = prob[[spec.value for spec in specs]]  # (N, I, J, K)
    if not np.all(np.isfinite(stacked)) or stacked.min() < -1e-3 or stacked.max() > 1 + 1e-3:
        raise InputError("the probabilities must be finite values in 0..1")
    return np.ascontiguousarray(np.transpose(np.clip(stacked, 0.0, 1.0), (3, 2, 1, 0)))


def _overlapping_frames(segments: Any, arr: np.ndarray, specs: Sequence[LabelSpec]) -> np.ndarray:
    """Masks ``(N, I, J[, K])``, one per described label -> (K, rows, columns, N) bool frames:
    highdicom's form for segments that may overlap."""
    masks = as_numpy(segments).astype(bool, copy=False)
    if masks.ndim == arr.ndim:  # 2D masks (N, I, J) for a single image
        masks = masks[..., None]
    if masks.ndim != 4 or masks.shape[1:] != arr.shape or masks.shape[0] != len(specs):
        raise InputError(
            f"the overlapping segments have shape {masks.shape}; the SEG needs "
            f"({len(specs)}, {', '.join(map(str, arr.shape))}): one mask per described label"
        )
    return np.ascontiguousarray(np.transpose(masks, (3, 2, 1, 0)))


def _seg_pixels(
    arr: np.ndarray, specs: Sequence[LabelSpec], seg_type: str, probabilities: Any
) -> np.ndarray:
    """highdicom's pixel array: a label-map style (K, rows, columns) array of segment numbers
    (BINARY, LABELMAP), or stacked per-segment probabilities (FRACTIONAL)."""
    if seg_type == "fractional":
        return _fractional_frames(probabilities, arr, specs)
    return _label_frames(arr, specs)


def _has_content(pixels: np.ndarray, max_fractional_value: int) -> bool:
    """Whether any frame holds a non-zero stored value (fractional values after quantisation)."""
    if pixels.dtype.kind == "f":
        return bool(np.any(np.rint(pixels * max_fractional_value) > 0))
    return bool(np.any(pixels))


def _all_frames(pixels: np.ndarray, source: DicomSource) -> np.ndarray:
    """The frames of a multi-frame source in stored order (frames not segmented are empty)."""
    nframes = int(source.first.get("NumberOfFrames", 1) or 1)
    full = np.zeros((nframes,) + pixels.shape[1:], dtype=pixels.dtype)
    for k, frame in enumerate(source.frame_numbers or []):
        full[int(frame) - 1] = pixels[k]
    return full


def _prepare_sources(
    source: DicomSource, pixels: np.ndarray
) -> tuple[list[Dataset], np.ndarray, bool]:
    """The source headers highdicom gets, the pixels in their frame order, and whether the
    first header was given a temporary geometry (:func:`_placeholder_geometry`)."""
    proxies = [source_proxy(ds, light=k > 0) for k, ds in enumerate(source.datasets)]
    first = proxies[0]
    if source.is_multiframe:
        pixels = _all_frames(pixels, source)
        nframes = pixels.shape[0]
        if nframes <= 1 or get_image_coordinate_system(first) is not None:
            return proxies, pixels, False
        if has_frame_of_reference(first):
            raise UnsupportedInputError(
                "the multi-frame object has a Frame of Reference but no plane position for "
                "its frames; a DICOM SEG can neither place its frames in that frame of "
                "reference nor leave it out",
                path=first_path(source),
                hint="use the NIfTI output",
            )
        _placeholder_geometry(first)
        return proxies, pixels, True
    if len(proxies) > 1 and get_image_coordinate_system(first) is None:
        raise UnsupportedInputError(
            f"{len(proxies)} single-frame images without patient geometry (Frame of Reference "
            "and ImagePositionPatient) cannot share one DICOM SEG: nothing places them relative "
            "to each other",
            path=first_path(source),
            hint="segment and write each image on its own",
        )
    _slice_thickness_fix(proxies)
    return proxies, pixels, False


def _build_seg(
    proxies: list[Dataset],
    pixels: np.ndarray,
    specs: Sequence[LabelSpec],
    kind: hd.seg.SegmentationTypeValues,
    who: SegIdentity,
    omit_empty_frames: bool,
    where: Any = None,
) -> hd.seg.Segmentation:
    """highdicom's Segmentation of the prepared sources and pixels (``where``: the source file,
    for the error message)."""
    first = proxies[0]
    extra: dict[str, Any] = {}
    if kind == hd.seg.SegmentationTypeValues.FRACTIONAL:
        extra = {"fractional_type": "PROBABILITY", "max_fractional_value": FRACTIONAL_MAX}
    try:
        return hd.seg.Segmentation(
            source_images=proxies,
            pixel_array=pixels,
            segmentation_type=kind,
            segment_descriptions=_segment_descriptions(specs, who.model_name, who.model_version),
            series_instance_uid=new_uid(),
            series_number=series_number_for(who.series_number, first, DEFAULT_SEG_SERIES_OFFSET),
            sop_instance_uid=new_uid(),
            instance_number=int(who.instance_number),
            manufacturer=SOFTWARE_NAME,
            manufacturer_model_name=SOFTWARE_NAME,
            software_versions=SOFTWARE_VERSION,
            device_serial_number="none",
            content_label=who.content_label.upper()[:16],
            content_description=(
                f"{who.model_name} {who.model_version} via {SOFTWARE_NAME} "
                f"{SOFTWARE_VERSION}; {NOT_FOR_DIAGNOSIS}"
            )[:64],
            # all-empty masks keep every frame (highdicom would fall back to that, logging a warning)
            omit_empty_frames=omit_empty_frames and _has_content(pixels, FRACTIONAL_MAX),
            series_description=who.series_description[:64],
            **extra,
        )
    except (ValueError, TypeError, AttributeError, KeyError) as exc:
        raise ProcessingError(
            f"highdicom cannot build a DICOM SEG for this source ({exc})",
            path=where,
        ) from exc


def _without_geometry(seg: hd.seg.Segmentation, source: DicomSource) -> None:
    """What a SEG without Frame of Reference needs: PatientOrientation, no partial measures."""
    # General Image: PatientOrientation is type 2C when there is no plane geometry.
    orientation = source.first.get("PatientOrientation")
    seg.PatientOrientation = list(orientation) if orientation and len(orientation) == 2 else ""
    # highdicom copies a source's PixelSpacing without SliceThickness into a Pixel Measures
    # item that its own reader (segread) then rejects; without a Frame of Reference the item
    # is optional, so an incomplete one is dropped.
    shared = seg.SharedFunctionalGroupsSequence[0]
    measures = shared.get("PixelMeasuresSequence")
    if measures is not None and "SliceThickness" not in measures[0]:
        del shared.PixelMeasuresSequence


def dicom_seg_dataset(
    labels: Any,
    source: DicomSource,
    label_info: Sequence[Mapping[str, Any]],
    model_name: str,
    model_version: str,
    *,
    series_number: int | None = None,
    series_description: str = f"medxai segmentation - {NOT_FOR_DIAGNOSIS}",
    instance_number: int = 1,
    content_label: str = "MEDXAI",
    omit_empty_frames: bool = True,
    seg_type: str = "binary",
    probabilities: Any | None = None,
    segments: Any | None = None,
) -> Dataset:
    """The DICOM SEG dataset of ``labels`` on the grid of ``source``, in memory
    (:func:`write_dicom_seg` writes it; the SR writer references it).

    Args:
        labels: label map ``(I, J[, K])`` uint8 (0 background), MONAI order: ``I`` = source
            Columns, ``J`` = Rows, ``K`` = source slices or frames; 2D for a single image.
        source: the DICOM images the labels were computed on.
        label_info: ``[{"value", "name", "color", ["category", "type"]}, ...]``; every non-zero
            value is one segment, present or not; values in ``labels`` must all be described.
        model_name, model_version: recorded as the segments' algorithm name and version.
        series_number, series_description, instance_number, content_label: of the new series
            and instance (:class:`SegIdentity`; series number default: the source's + 1000).
        omit_empty_frames: leave out frames without any voxel of a segment (smaller files).
        seg_type: ``binary`` (a bit per pixel and segment), ``labelmap`` (a frame per source frame
            of segment numbers; Label Map Segmentation, DICOM 2024c) or ``fractional``
            (``probabilities`` as PROBABILITY, 8 bits, MaximumFractionalValue 255).
        probabilities: for ``fractional``: ``(C, I, J[, K])`` floats in 0..1, channel ``c`` that
            of label value ``c`` (``Prediction.probabilities``); segment ``n`` holds the channel
            of the ``n``-th described label.
        segments: for ``binary``: ``(N, I, J[, K])`` masks that may overlap, mask ``n`` that of
            the ``n``-th described label (e.g. BraTS's tumour core inside the whole tumour); the
            segments then overlap as the masks do, which a label map cannot hold.

    Raises:
        InputError: a shape that does not match the source, undescribed label values, missing
            UIDs, an unknown ``seg_type``, missing or malformed ``probabilities``.
        UnsupportedInputError: what a SEG cannot reference (several pictures without geometry,
            frames in a single-frame SOP class, a mosaic, frames without positions in a Frame
            of Reference), ``labelmap`` with a highdicom that cannot write it.
        ProcessingError: highdicom refuses the input.
    """
    kind = segmentation_type(seg_type)
    who = SegIdentity(
        model_name, model_version, series_number, series_description, instance_number, content_label
    )
    _check_source(source)
    arr = _checked_labels(labels, source)
    specs = _checked_specs(label_info, arr)
    pixels = _segment_pixels(arr, specs, seg_type, probabilities, segments)
    proxies, pixels, placeholder = _prepare_sources(source, pixels)
    seg = _build_seg(proxies, pixels, specs, kind, who, omit_empty_frames, first_path(source))
    _own_geometry(seg, source, placeholder)
    return seg


def _segment_pixels(
    arr: np.ndarray,
    specs: Sequence[LabelSpec],
    seg_type: str,
    probabilities: Any | None,
    segments: Any | None,
) -> np.ndarray:
    """The SEG's pixels: overlapping ``segments`` (binary), else from the label map."""
    if segments is not None and seg_type == "binary":
        return _overlapping_frames(segments, arr, specs)
    return _seg_pixels(arr, specs, seg_type, probabilities)


def _own_geometry(seg: Any, source: DicomSource, placeholder: bool) -> None:
    """No placeholder geometry in the SEG; a SEG without a Frame of Reference as for pictures."""
    if placeholder:
        _remove_placeholder_geometry(seg)
    if not has_frame_of_reference(seg):
        _without_geometry(seg, source)


def write_dicom_seg(
    labels: Any,
    source: DicomSource,
    label_info: Sequence[Mapping[str, Any]],
    model_name: str,
    model_version: str,
    path: str | Path,
    *,
    series_number: int | None = None,
    series_description: str = f"medxai segmentation - {NOT_FOR_DIAGNOSIS}",
    instance_number: int = 1,
    content_label: str = "MEDXAI",
    omit_empty_frames: bool = True,
    seg_type: str = "binary",
    probabilities: Any | None = None,
    segments: Any | None = None,
) -> Path:
    """Write the DICOM SEG of :func:`dicom_seg_dataset` (the same arguments and errors, and
    ``ProcessingError`` when the file cannot be written) to ``path``; returns the path."""
    seg = dicom_seg_dataset(
        labels,
        source,
        label_info,
        model_name,
        model_version,
        series_number=series_number,
        series_description=series_description,
        instance_number=instance_number,
        content_label=content_label,
        omit_empty_frames=omit_empty_frames,
        seg_type=seg_type,
        probabilities=probabilities,
        segments=segments,
    )
    return save_dicom(seg, Path(path))
