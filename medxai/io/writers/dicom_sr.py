"""DICOM TID 1500 Measurement Report (Comprehensive 3D SR) of a segmentation and its saliency.

One SR per result, built with highdicom's SR templates (``hd.sr.MeasurementReport``, TID 1500):
the observer is the device medxai (name, model and version); one "Volumetric ROI measurements"
group (TID 1411) per segment of the SEG, which references the segment (SEG SOP instance and
segment number, and the source images the segment was derived from), with its tracking
identifier, finding category and type (the SEG segment's codes), the algorithm identification
(model name and version; parameters: weights SHA-256 and saliency method) and measurements:

- size: Area (SCT 42798000, ``mm2``) for a 2D image / Volume (SCT 118565006, ``mm3``) for a
  volume when the spacing is in millimetres of a patient; otherwise the count in ``{pixels}`` /
  ``{voxels}`` (UCUM annotations) under the same concept;
- mean and maximum saliency inside the segment: the saliency quantity of the Parametric Map
  (DCM 130403 / 130404) with derivation Mean (SCT 255586005) / Maximum (SCT 56851009), unit ``1``;
- share of the saliency energy inside the segment (sum inside / sum over the image), medxai's code
  ``99MEDXAI`` / ``saliency-energy-share``, unit ``1`` (0..1);
- the per-case quality score when one is given (``99MEDXAI`` / ``quality-score``, unit ``1``).

Image coordinates (what OHIF 3.x needs to show a measurement): besides the segment's volumetric
group, every outline of the segment on a slice (on the picture, for a 2D image) gets a "Planar ROI
measurements" group (TID 1410) whose Image Region is a closed POLYLINE SCOORD in the pixel
columns/rows of that source image (SELECTED FROM the image, with its frame number for a
multi-frame source), and whose measurement is the area of the pixels that outline encloses
(the finding type is repeated; the algorithm and finding category are in the volumetric group).
The outline is the iso-line at 0.5 of the zero-padded mask of one 4-connected component
(``skimage.measure.find_contours``), so each vertex is the midpoint of two neighbouring pixel
centres, one inside the segment and one outside, in DICOM's pixel convention (the centre of the
top-left pixel is ``(0.5, 0.5)``). Holes are not drawn (a SCOORD has no holes; the SEG has them).
SCOORD (2D, on the image) rather than SCOORD3D is used for all inputs: pictures and radiographs
have no Frame of Reference, and OHIF looks SCOORDs up by the referenced image.

Tracking UIDs: each planar group has its own; the segment's volumetric group shares the UID of
the planar group with the segment's largest outline. OHIF merges groups with one UID into one
measurement and reads its coordinates from the first SCOORD; a group without any (a plain TID
1411 group) makes OHIF 3.x stop loading the whole report
(``Cannot read properties of undefined (reading 'ReferencedSOPSequence')``). For the same reason a
segment without any voxel gets no group at all (the SEG says it is empty).

The Image Library (TID 1600) lists the source images (older OHIF 3.x releases stop without
one). Evidence (CurrentRequestedProcedureEvidenceSequence) lists the SEG and the source images.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.tag import Tag
from pydicom.uid import ExplicitVRLittleEndian
from scipy import ndimage
from skimage.measure import find_contours

from medxai.errors import InputError, ProcessingError
from medxai.io.types import DicomSource
from medxai.io.writers._atomic import write_bytes_atomic
from medxai.io.writers._common import (
    NOT_FOR_DIAGNOSIS,
    SOFTWARE_NAME,
    SOFTWARE_VERSION,
    as_label_array,
    as_numpy,
    new_uid,
    normalise_labels,
    series_number_for,
    source_proxy,
)
from medxai.io.writers._encode import dicom_file_bytes
from medxai.io.writers._highdicom import memoise_iod_lookups
from medxai.io.writers.dicom_pm import MEDXAI_SCHEME, quantity_code
from medxai.io.writers.dicom_seg import segment_codes

memoise_iod_lookups()  # highdicom asks the same IOD questions for every object

__all__ = [
    "write_dicom_sr",
    "segment_measurements",
    "segment_outlines",
    "SegmentOutline",
    "DEFAULT_SR_SERIES_OFFSET",
    "ENERGY_SHARE",
    "QUALITY_SCORE",
]

#: Series number of the SR, when not given: the source's series number plus this.
DEFAULT_SR_SERIES_OFFSET = 4000
ENERGY_SHARE = Code("saliency-energy-share", MEDXAI_SCHEME, "Share of saliency energy in segment")
QUALITY_SCORE = Code("quality-score", MEDXAI_SCHEME, "Segmentation quality score")
_PIXELS = Code("{pixels}", "UCUM", "pixels")
_VOXELS = Code("{voxels}", "UCUM", "voxels")
_MEAN = Code("255586005", "SCT", "Mean")
_MAXIMUM = Code("56851009", "SCT", "Maximum")


def segment_measurements(
    labels: Any, value: int, spacing: Sequence[float] | None, saliency: Any | None
) -> dict[str, float]:
    """Size and saliency statistics of label ``value`` in ``labels`` ``(I, J[, K])``.

    Args:
        labels: label map, MONAI order.
        value: the label.
        spacing: voxel size in mm along ``I, J[, K]``, or ``None`` (sizes in pixels/voxels).
        saliency: the map ``(I, J[, K])`` explaining this label, or ``None``.

    Returns:
        ``count``; ``area_mm2`` / ``volume_mm3`` (with ``spacing``); ``saliency_mean``,
        ``saliency_max`` (0 for an empty segment) and ``energy_share`` with a saliency map.
    """
    arr = as_label_array(labels)
    mask = arr == value
    count = int(mask.sum())
    out: dict[str, float] = {"count": count}
    if spacing is not None:
        size = float(np.prod([float(s) for s in list(spacing)[: arr.ndim]]))
        out["area_mm2" if arr.ndim == 2 else "volume_mm3"] = count * size
    if saliency is not None:
        sal = as_numpy(saliency).astype(np.float64)
        if sal.ndim == arr.ndim + 1 and sal.shape[0] == 1:
            sal = sal[0]
        if sal.shape != arr.shape:
            raise InputError(f"saliency {sal.shape} and labels {arr.shape} differ in shape")
        inside = sal[mask]
        total = float(sal.sum())
        out["saliency_mean"] = float(inside.mean()) if count else 0.0
        out["saliency_max"] = float(inside.max()) if count else 0.0
        out["energy_share"] = float(inside.sum()) / total if total > 0 else 0.0
    return out


@dataclass(frozen=True)
class SegmentOutline:
    """One closed outline of a segment on one slice.

    Attributes:
        slice_index: ``k`` of the label map (0 for a 2D image).
        points: ``(n, 2)`` DICOM pixel coordinates (column, row; the centre of the top-left pixel
            is ``(0.5, 0.5)``), closed: the last point repeats the first.
        count: the number of pixels of the component the outline encloses (holes excluded).
    """

    slice_index: int
    points: np.ndarray
    count: int


def _shoelace(points: np.ndarray) -> float:
    x, y = points[:, 0], points[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def segment_outlines(labels: Any, value: int) -> list[SegmentOutline]:
    """The outer outline of every 4-connected component of label ``value``, slice by slice.

    Args:
        labels: label map ``(I, J[, K])``, MONAI order (``I`` along columns, ``J`` along rows).
        value: the label.

    Returns:
        outlines in slice order, then in the order of the components' first pixel; each one the
        iso-line at 0.5 of the component's zero-padded mask (every vertex is the midpoint of a
        pixel of the component and a 4-neighbour outside it).
    """
    arr = as_label_array(labels)
    volume = arr[:, :, None] if arr.ndim == 2 else arr
    out = []
    for k in range(volume.shape[2]):
        mask = volume[:, :, k] == value
        along_i, along_j = mask.any(1), mask.any(0)
        if not along_i.any():
            continue
        # labelled in the label's bounding box on the slice (labelling and finding the
        # components' boxes took most of the time on a whole 512x512 slice): the same
        # components, numbered in the same (raster) order, their boxes shifted by its corner
        i0, j0 = int(along_i.argmax()), int(along_j.argmax())
        i1 = len(along_i) - int(along_i[::-1].argmax())
        j1 = len(along_j) - int(along_j[::-1].argmax())
        components, n = ndimage.label(mask[i0:i1, j0:j1])
        # each component traced in its bounding box (not the whole slice): the same iso-line
        for c, box in enumerate(ndimage.find_objects(components), start=1):
            component = components[box] == c
            padded = np.pad(component, 1).astype(np.float32)
            # (i, j) = (column, row) index of the unpadded mask; DICOM's pixel centres are +0.5
            offset = np.array([box[0].start + i0, box[1].start + j0], dtype=np.float64)
            contours = [ij + offset - 1.0 + 0.5 for ij in find_contours(padded, 0.5)]
            outer = max(contours, key=_shoelace)
            if not np.array_equal(outer[0], outer[-1]):
                outer = np.vstack([outer, outer[:1]])
            out.append(SegmentOutline(k, outer, int(component.sum())))
    return out


def _size_measurement(
    stats: Mapping[str, float], ndim: int, algorithm: hd.sr.AlgorithmIdentification
) -> hd.sr.Measurement:
    if ndim == 2:
        name = codes.SCT.Area
        value, unit = (
            (stats["area_mm2"], codes.UCUM.SquareMillimeter)
            if "area_mm2" in stats
            else (stats["count"], _PIXELS)
        )
    else:
        name = codes.SCT.Volume
        value, unit = (
            (stats["volume_mm3"], codes.UCUM.CubicMillimeter)
            if "volume_mm3" in stats
            else (stats["count"], _VOXELS)
        )
    return hd.sr.Measurement(name=name, value=float(value), unit=unit, algorithm_id=algorithm)


def _measurements(
    stats: Mapping[str, float],
    ndim: int,
    method: str | None,
    quality_score: float | None,
    algorithm: hd.sr.AlgorithmIdentification,
) -> list[hd.sr.Measurement]:
    out = [_size_measurement(stats, ndim, algorithm)]
    if "saliency_mean" in stats:
        quantity = quantity_code("saliency", method)
        one = codes.UCUM.NoUnits
        out += [
            hd.sr.Measurement(
                name=quantity,
                value=stats["saliency_mean"],
                unit=one,
                derivation=_MEAN,
                algorithm_id=algorithm,
            ),
            hd.sr.Measurement(
                name=quantity,
                value=stats["saliency_max"],
                unit=one,
                derivation=_MAXIMUM,
                algorithm_id=algorithm,
            ),
            hd.sr.Measurement(
                name=ENERGY_SHARE, value=stats["energy_share"], unit=one, algorithm_id=algorithm
            ),
        ]
    if quality_score is not None:
        out.append(
            hd.sr.Measurement(
                name=QUALITY_SCORE,
                value=float(quality_score),
                unit=codes.UCUM.NoUnits,
                algorithm_id=algorithm,
            )
        )
    return out


def _referenced_segment(seg: Dataset, number: int, source: DicomSource) -> hd.sr.ReferencedSegment:
    images = []
    for ds in source.datasets:
        frames = source.frame_numbers if source.is_multiframe else None
        images.append(
            hd.sr.SourceImageForSegmentation(
                referenced_sop_class_uid=ds.SOPClassUID,
                referenced_sop_instance_uid=ds.SOPInstanceUID,
                referenced_frame_numbers=[int(f) for f in frames] if frames else None,
            )
        )
    return hd.sr.ReferencedSegment(
        sop_class_uid=seg.SOPClassUID,
        sop_instance_uid=seg.SOPInstanceUID,
        segment_number=number,
        source_images=images,
    )


def _region_source(source: DicomSource, k: int) -> hd.sr.SourceImageForRegion:
    """The image (and frame) that slice ``k`` of the label map lies on."""
    if source.is_multiframe:
        ds, frames = source.first, [int((source.frame_numbers or [])[k])]
    else:
        ds, frames = source.datasets[k], None
    return hd.sr.SourceImageForRegion(
        referenced_sop_class_uid=ds.SOPClassUID,
        referenced_sop_instance_uid=ds.SOPInstanceUID,
        referenced_frame_numbers=frames,
    )


_GRAPHIC_DATA = Tag(0x0070, 0x0022)


def _polyline_region(points: np.ndarray, image: hd.sr.SourceImageForRegion) -> hd.sr.ImageRegion:
    """highdicom's POLYLINE Image Region of ``points`` (``(n, 2)``), its Graphic Data given as
    the encoded element (float32, little endian: what pydicom writes from highdicom's list).

    highdicom stores the points as a list of Python floats, which pydicom converts one by one
    into its value (about 1.4 ms for an outline of 800 points, more than the rest of the
    group); the region is made with the first two points (highdicom checks only the shape)
    and then holds all of them as the raw element, written as it is (:func:`_encoded`).
    """
    coords = np.asarray(points, dtype=np.float32)
    region = hd.sr.ImageRegion(
        graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
        graphic_data=coords[:2] if len(coords) > 2 else coords,
        source_image=image,
    )
    data = coords.astype("<f4").tobytes()
    region[_GRAPHIC_DATA] = RawDataElement(_GRAPHIC_DATA, "FL", len(data), data, 0, False, True)
    return region


def _raw_holders(ds: Dataset, into: list[Dataset]) -> bool:
    """Append every sequence item under ``ds`` that holds a raw (encoded) element to ``into``;
    False where one is other than the Graphic Data of :func:`_polyline_region`."""
    for elem in ds._dict.values():
        if isinstance(elem, RawDataElement) or elem.VR != "SQ":
            continue
        for item in elem.value:
            raw = [e for e in item._dict.values() if isinstance(e, RawDataElement)]
            if any(
                e.tag != _GRAPHIC_DATA or e.is_implicit_VR or not e.is_little_endian for e in raw
            ):
                return False
            if raw:
                into.append(item)
            if not _raw_holders(item, into):
                return False
    return True


def _encoded(sr: Dataset) -> bytes:
    """The file of ``sr`` (Explicit VR Little Endian), as ``sr.save_as`` writes it
    (:func:`~medxai.io.writers._encode.dicom_file_bytes`).

    pydicom converts raw elements of a dataset made in memory back into values before writing
    them; the outlines' Graphic Data is held raw (float32). The items that hold it are marked
    as encoded in the file's transfer syntax and character set (pydicom's
    ``set_original_encoding``, its way to write such datasets as they are) for the one call,
    so that the raw elements are written as they are: the same bytes (tested against
    ``save_as`` without the marks). The marks are taken off again.
    """
    items: list[Dataset] = []
    explicit_little = sr.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    if not explicit_little or not _raw_holders(sr, items):
        items = []  # written as pydicom writes any dataset
    before = [(it.original_encoding, it.original_character_set) for it in items]
    try:
        for item in items:
            item.set_original_encoding(False, True, item._character_set)
        return dicom_file_bytes(sr)
    finally:
        for item, ((implicit, little), charset) in zip(items, before, strict=True):
            item.set_original_encoding(implicit, little, charset)


def _planar_group(
    outline: SegmentOutline,
    name: str,
    ndim: int,
    source: DicomSource,
    spacing: Sequence[float] | None,
    finding_type: Code,
) -> tuple[hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations, str]:
    """TID 1410 group of one outline and its tracking UID: tracking identifier, finding type,
    the outline as Image Region, its area (the algorithm and the finding category are in the
    segment's volumetric group, not repeated per outline)."""
    if spacing is not None:
        value = outline.count * float(spacing[0]) * float(spacing[1])
        unit = codes.UCUM.SquareMillimeter
    else:
        value, unit = float(outline.count), _PIXELS
    region = _polyline_region(outline.points, _region_source(source, outline.slice_index))
    where = f" slice {outline.slice_index + 1}" if ndim == 3 else ""
    uid = new_uid("sr outline tracking")
    group = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=uid, identifier=f"{name}{where}"[:64]),
        referenced_region=region,
        finding_type=finding_type,
    )
    area = hd.sr.Measurement(name=codes.SCT.Area, value=float(value), unit=unit)
    _insert_measurements(group, [area], references=1)
    return group, str(uid)


def _insert_measurements(
    group: hd.sr.ContentSequence, measurements: Sequence[hd.sr.Measurement], references: int
) -> None:
    """Put ``measurements`` where highdicom's TID 1410/1411 template would (after its other
    items, before the ``references`` items of the region or segment reference).

    Given to the template, each measurement's content would be searched for image coordinates
    (not allowed there); medxai's measurements have none, and the search took a good part of
    the report's time.
    """
    items = group[0].ContentSequence
    at = len(items) - references
    for n, item in enumerate(item for measurement in measurements for item in measurement):
        items.insert(at + n, item)


_SOURCE = Code("260753009", "SCT", "Source")


def _image_library(source: DicomSource) -> hd.sr.ContainerContentItem:
    """TID 1600 Image Library: one group listing the source images (no descriptors)."""
    contains = hd.sr.RelationshipTypeValues.CONTAINS
    group = hd.sr.ContainerContentItem(name=codes.DCM.ImageLibraryGroup, relationship_type=contains)
    group.ContentSequence = hd.sr.ContentSequence(
        [
            hd.sr.ImageContentItem(
                name=_SOURCE,
                referenced_sop_class_uid=ds.SOPClassUID,
                referenced_sop_instance_uid=ds.SOPInstanceUID,
                relationship_type=contains,
            )
            for ds in source.datasets
        ]
    )
    library = hd.sr.ContainerContentItem(name=codes.DCM.ImageLibrary, relationship_type=contains)
    library.ContentSequence = hd.sr.ContentSequence([group])
    return library


def _add_content(sr: hd.sr.Comprehensive3DSR, library: Dataset, groups: Sequence[Any]) -> None:
    """Put the Image Library before the Imaging Measurements container (TID 1500 order) and
    append the planar groups to that container.

    Both are added to the built object rather than given to highdicom's SR constructor, which
    deep-copies and re-parses the whole content tree: with hundreds of outlines (and
    highdicom's per-image library descriptors) that took most of the time of writing the
    report. Each group was built, and validated, by highdicom's TID 1410 template.
    """
    content = list(sr.ContentSequence)
    (index,) = [
        n
        for n, item in enumerate(content)
        if item.ConceptNameCodeSequence[0].CodeValue == "126010"  # Imaging Measurements
    ]
    content[index].ContentSequence.extend(item for group in groups for item in group)
    sr.ContentSequence = [*content[:index], library, *content[index:]]


def _root_only(root: Dataset) -> Dataset:
    """The report's root container without its content items.

    highdicom's SR constructor deep-copies and re-parses the content it is given, and searches
    it for the instances it references; the built tree is known to be valid (each template
    checked its own items) and references only the evidence (the source images and the SEG).
    So the constructor gets the root alone (it records every evidence instance all the same)
    and the content items are added to the built object (:func:`write_dicom_sr`), the same
    elements highdicom would have copied.
    """
    stub = Dataset()
    for elem in root:
        if elem.keyword != "ContentSequence":
            stub[elem.tag] = elem
    stub.ContentSequence = []  # highdicom wants one; the report's replaces it
    return stub


def _observer() -> hd.sr.ObservationContext:
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=new_uid(),
        name=SOFTWARE_NAME,
        manufacturer_name=SOFTWARE_NAME,
        model_name=f"{SOFTWARE_NAME} {SOFTWARE_VERSION}",
    )
    return hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=codes.cid270.Device, observer_identifying_attributes=device
        )
    )


def write_dicom_sr(
    labels: Any,
    source: DicomSource,
    seg: str | Path | Dataset,
    label_info: Sequence[Mapping[str, Any]],
    path: str | Path,
    *,
    model_name: str,
    model_version: str,
    weights_sha256: str | None = None,
    spacing: Sequence[float] | None = None,
    saliency: Mapping[int, Any] | None = None,
    method: str | None = None,
    quality_score: float | None = None,
    series_number: int | None = None,
) -> Path:
    """Write a TID 1500 Measurement Report of ``labels`` (as written in ``seg``).

    Per non-empty segment: one volumetric group (TID 1411, referencing the SEG's segment) with
    the size, saliency and quality measurements, and one planar group (TID 1410) per outline
    on a slice, with the outline as a SCOORD on that source image and its area (see the module
    docstring).

    Args:
        labels: the label map ``(I, J[, K])`` the SEG was written from (MONAI order).
        source: the DICOM images the labels were computed on (a photo's placeholder study too).
        seg: the DICOM SEG written from ``labels`` and ``label_info`` (path or dataset); its
            segment numbers are the order of the non-zero labels of ``label_info``.
        label_info: ``[{"value", "name", ...}, ...]`` as given to the SEG writer.
        path: the file to write.
        model_name, model_version, weights_sha256: the algorithm identification.
        spacing: voxel size in mm along ``I, J[, K]`` when the image has a patient geometry
            (sizes in mm² / mm³), else ``None`` (sizes in pixels / voxels).
        saliency: ``{label value: map (I, J[, K])}``; labels without a map get no saliency rows.
        method: the saliency method (names the coded saliency quantity).
        quality_score: the per-case quality score, reported in every segment's group.
        series_number: of the new series (default: source series number + 4000).

    Raises:
        InputError: labels that do not match the SEG's segments, bad shapes.
        ProcessingError: highdicom refuses the content, or the file cannot be written.
    """
    arr = as_label_array(labels)
    seg_ds = pydicom.dcmread(seg, stop_before_pixels=True) if isinstance(seg, (str, Path)) else seg
    specs = normalise_labels(label_info)
    numbers = {int(s.SegmentNumber): str(s.SegmentLabel) for s in seg_ds.SegmentSequence}
    if len(numbers) != len(specs):
        raise InputError(
            f"the SEG has {len(numbers)} segments but label_info describes "
            f"{len(specs)} labels; pass the label_info the SEG was written with"
        )
    parameters = [
        f"weights sha256 {weights_sha256 or 'unknown'}",
        f"saliency method {method or 'none'}",
    ]
    algorithm = hd.sr.AlgorithmIdentification(
        name=model_name[:64], version=model_version[:64], parameters=parameters
    )
    groups: list[Any] = []
    outline_groups: list[Any] = []
    for number, spec in enumerate(specs, start=1):
        outlines = segment_outlines(arr, spec.value)
        if not outlines:
            continue  # nothing to draw: OHIF cannot load a group without image coordinates
        stats = segment_measurements(arr, spec.value, spacing, (saliency or {}).get(spec.value))
        category, prop_type = segment_codes(spec)
        name = f"segment {number} {spec.name}"
        planar = [_planar_group(o, name, arr.ndim, source, spacing, prop_type) for o in outlines]
        largest = max(range(len(outlines)), key=lambda n: outlines[n].count)
        segment = _referenced_segment(seg_ds, number, source)
        volumetric = hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(
                uid=planar[largest][1], identifier=name[:64]
            ),
            referenced_segment=segment,
            finding_type=prop_type,
            finding_category=category,
            algorithm_id=algorithm,
        )
        measurements = _measurements(stats, arr.ndim, method, quality_score, algorithm)
        _insert_measurements(volumetric, measurements, references=len(segment))
        groups.append(volumetric)
        outline_groups += [group for group, _ in planar]
    proxies = [source_proxy(ds, light=k > 0) for k, ds in enumerate(source.datasets)]
    try:
        report = hd.sr.MeasurementReport(
            observation_context=_observer(),
            procedure_reported=Code("363679005", "SCT", "Imaging procedure"),
            imaging_measurements=groups,
        )
        sr = hd.sr.Comprehensive3DSR(
            evidence=[proxies[0], *proxies[1:], seg_ds],
            content=_root_only(report[0]),
            series_instance_uid=new_uid(),
            series_number=series_number_for(series_number, proxies[0], DEFAULT_SR_SERIES_OFFSET),
            sop_instance_uid=new_uid(),
            instance_number=1,
            manufacturer=SOFTWARE_NAME,
            is_complete=True,
            series_description=f"medxai measurements - {NOT_FOR_DIAGNOSIS}"[:64],
        )
    except (ValueError, TypeError, AttributeError, KeyError) as exc:
        raise ProcessingError(
            f"highdicom cannot build the measurement report ({exc})",
            path=source.paths[0] if source.paths else None,
        ) from exc
    content = report[0]["ContentSequence"]
    sr[content.tag] = content
    _add_content(sr, _image_library(source), outline_groups)
    sr.SoftwareVersions = SOFTWARE_VERSION
    return write_bytes_atomic(path, _encoded(sr))
