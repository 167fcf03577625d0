"""DICOM RT Structure Set of a label map on a CT/MR series: one ROI per label, closed planar
contours per slice in patient coordinates (LPS, millimetres).

The label map comes in MONAI order ``(I, J, K)`` (``I`` along columns, ``J`` along rows, ``K``
along ``source.datasets``). For each label and slice, the mask's outlines are traced with
``skimage.measure.find_contours`` at level 0.75 on the zero-padded mask (so that every outline is
closed and runs a quarter pixel outside the centres of the mask's boundary pixels), and each
outline point
``(i, j)`` is placed in the patient with the slice's LPS affine
(:func:`medxai.io.geometry.dicom_affine_lps`: ``IPP + i * column spacing * row cosines +
j * row spacing * column cosines``). A hole is written as a contour of its own (the "XOR" rule of
PS3.3 C.8.8.6.3 that readers such as rt-utils and dicompyler apply).

The structure set references the Frame of Reference, the study, the series and every slice
(ContourImageSequence), each contour references its slice, each ROI has a colour, an RT ROI
Observation (interpreted type ``ORGAN`` for anatomy, empty otherwise) and ROIGenerationAlgorithm
``AUTOMATIC`` with the model named in ROIGenerationDescription.

Only single-frame series with a Frame of Reference (CT, MR, PET) can be written: RT Structure
Sets reference slices, not frames, and need patient coordinates.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, RTStructureSetStorage
from skimage.measure import find_contours

from medxai.errors import InputError, UnsupportedInputError
from medxai.io.geometry import dicom_affine_lps
from medxai.io.types import DicomSource
from medxai.io.writers._common import (
    NOT_FOR_DIAGNOSIS,
    SOFTWARE_NAME,
    SOFTWARE_VERSION,
    LabelSpec,
    as_label_array,
    new_uid,
    normalise_labels,
    now,
    save_dicom,
    series_number_for,
    source_proxy,
)
from medxai.labelmaps import present_values

__all__ = ["write_dicom_rtstruct", "label_contours_lps", "DEFAULT_RTSTRUCT_SERIES_OFFSET"]

#: Series number of the structure set, when not given: the source's series number plus this.
DEFAULT_RTSTRUCT_SERIES_OFFSET = 5000

_PATIENT_STUDY = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "PatientAge",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "AccessionNumber",
    "ReferringPhysicianName",
    "StudyDescription",
    "SpecificCharacterSet",
)
#: Iso-level of the traced outlines: a quarter pixel outside the centres of the boundary pixels,
#: so that every pixel centre inside the mask is strictly inside the polygon and every other one
#: strictly outside (point-in-polygon readers such as dicompyler), and rounding the vertices to
#: pixels gives the boundary pixels themselves (polygon-fill readers such as rt-utils).
_LEVEL = 0.75
_LESION_WORDS = ("lesion", "tumor", "tumour", "nodule", "mass", "metast", "cancer")


def _check_source(source: DicomSource, shape: tuple[int, ...]) -> None:
    if not source.datasets:
        raise InputError("the DICOM source holds no dataset")
    first = source.first
    where = source.paths[0] if source.paths else None
    if (
        source.is_multiframe
        or not first.get("FrameOfReferenceUID")
        or "ImagePositionPatient" not in first
    ):
        raise UnsupportedInputError(
            "an RT Structure Set needs a series of single-frame images with patient geometry "
            "(Frame of Reference, ImagePositionPatient); this source has none or is multi-frame",
            path=where,
            hint="use the DICOM SEG output for this input",
        )
    expected = (int(first.Columns), int(first.Rows), len(source.datasets))
    if len(shape) != 3 or tuple(shape) != expected:
        raise InputError(
            f"the label map has shape {tuple(shape)} but the DICOM series is "
            f"{expected} (columns, rows, slices)",
            path=where,
            hint="pass the labels on the input grid, in MONAI order (I, J, K)",
        )


def label_contours_lps(mask: np.ndarray, ds: Dataset) -> list[np.ndarray]:
    """Closed outlines of a 2D mask ``(I, J)`` on slice ``ds``, as ``(n, 3)`` LPS points (mm).

    Each outline is open-ended as DICOM wants it (CLOSED_PLANAR: the last point joins the first,
    it is not repeated).
    """
    affine = dicom_affine_lps(
        [float(v) for v in ds.ImageOrientationPatient],
        [float(v) for v in ds.ImagePositionPatient],
        [float(v) for v in ds.PixelSpacing],
    )
    padded = np.pad(mask.astype(np.float32), 1)
    out = []
    for contour in find_contours(padded, _LEVEL):
        points = contour - 1.0  # (i, j) of the unpadded mask
        if len(points) > 1 and np.allclose(points[0], points[-1]):
            points = points[:-1]
        if len(points) < 3:
            continue
        ijk = np.column_stack([points, np.zeros(len(points)), np.ones(len(points))])
        out.append((ijk @ affine.T)[:, :3])
    return out


def _image_ref(ds: Dataset) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = ds.SOPClassUID
    item.ReferencedSOPInstanceUID = ds.SOPInstanceUID
    return item


def _base(first: Dataset, series_number: int, model: str) -> Dataset:
    stamp = now()
    ds = Dataset()
    for kw in _PATIENT_STUDY:
        if kw in first:
            setattr(ds, kw, first[kw].value)
    ds.SOPClassUID = RTStructureSetStorage
    ds.SOPInstanceUID = new_uid()
    ds.Modality = "RTSTRUCT"
    ds.SeriesInstanceUID = new_uid()
    ds.SeriesNumber = series_number
    ds.SeriesDescription = f"medxai contours - {NOT_FOR_DIAGNOSIS}"[:64]
    ds.OperatorsName = ""
    ds.Manufacturer = SOFTWARE_NAME
    ds.ManufacturerModelName = SOFTWARE_NAME
    ds.SoftwareVersions = SOFTWARE_VERSION
    ds.DeviceSerialNumber = "none"
    ds.InstanceNumber = 1
    ds.StructureSetLabel = "MEDXAI"
    ds.StructureSetName = model[:64]
    ds.StructureSetDescription = (
        f"{model} via {SOFTWARE_NAME} {SOFTWARE_VERSION}; {NOT_FOR_DIAGNOSIS}"
    )
    ds.StructureSetDate = ds.InstanceCreationDate = stamp.strftime("%Y%m%d")
    ds.StructureSetTime = ds.InstanceCreationTime = stamp.strftime("%H%M%S")
    ds.ApprovalStatus = "UNAPPROVED"
    return ds


def _frame_of_reference(source: DicomSource, images: Sequence[Dataset]) -> Dataset:
    first = source.first
    series = Dataset()
    series.SeriesInstanceUID = first.SeriesInstanceUID
    series.ContourImageSequence = [_image_ref(ds) for ds in images]
    study = Dataset()
    study.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"  # Detached Study Management (retired)
    study.ReferencedSOPInstanceUID = first.StudyInstanceUID
    study.RTReferencedSeriesSequence = [series]
    item = Dataset()
    item.FrameOfReferenceUID = first.FrameOfReferenceUID
    item.RTReferencedStudySequence = [study]
    return item


def _roi(
    spec: LabelSpec,
    number: int,
    labels: np.ndarray,
    source: DicomSource,
    images: Sequence[Dataset],
    model: str,
) -> tuple[Dataset, Dataset, Dataset]:
    """(StructureSetROISequence, ROIContourSequence, RTROIObservationsSequence) items."""
    roi = Dataset()
    roi.ROINumber = number
    roi.ReferencedFrameOfReferenceUID = source.first.FrameOfReferenceUID
    roi.ROIName = spec.name[:64]
    roi.ROIDescription = f"label value {spec.value}"
    roi.ROIGenerationAlgorithm = "AUTOMATIC"
    roi.ROIGenerationDescription = f"{model} via {SOFTWARE_NAME} {SOFTWARE_VERSION}"[:64]
    contours: list[Dataset] = []
    for k, ds in enumerate(source.datasets):
        mask = labels[:, :, k] == spec.value
        if not mask.any():
            continue
        for points in label_contours_lps(mask, ds):
            contour = Dataset()
            contour.ContourImageSequence = [_image_ref(images[k])]
            contour.ContourGeometricType = "CLOSED_PLANAR"
            contour.NumberOfContourPoints = len(points)
            contour.ContourNumber = len(contours) + 1
            contour.ContourData = [f"{v:.3f}" for v in points.ravel().tolist()]
            contours.append(contour)
    roi_contour = Dataset()
    roi_contour.ROIDisplayColor = list(spec.color)
    roi_contour.ReferencedROINumber = number
    if contours:
        roi_contour.ContourSequence = contours
    observation = Dataset()
    observation.ObservationNumber = number
    observation.ReferencedROINumber = number
    lesion = any(word in spec.name.lower() for word in _LESION_WORDS)
    observation.RTROIInterpretedType = "" if lesion else "ORGAN"
    observation.ROIInterpreter = ""
    return roi, roi_contour, observation


def write_dicom_rtstruct(
    labels: Any,
    source: DicomSource,
    label_info: Sequence[Mapping[str, Any]],
    path: str | Path,
    *,
    model_name: str,
    model_version: str,
    series_number: int | None = None,
) -> Path:
    """Write ``labels`` as an RT Structure Set referencing the series ``source``.

    Args:
        labels: label map ``(I, J, K)`` on the series grid (MONAI order).
        source: the series (single-frame images with patient geometry, sorted along the normal).
        label_info: ``[{"value", "name", "color"}, ...]``: one ROI per non-zero label (labels
            absent from the map get an ROI without contours).
        path: the file to write.
        model_name, model_version: named in the structure set and each ROI.
        series_number: of the new series (default: source series number + 5000).

    Raises:
        InputError: a shape that does not match, undescribed labels, a header without UIDs.
        UnsupportedInputError: a source without patient geometry or a multi-frame source.
    """
    arr = as_label_array(labels)
    _check_source(source, arr.shape)
    specs = normalise_labels(label_info)
    if not specs:
        raise InputError("label_info describes no non-zero label; an RTSTRUCT needs an ROI")
    undescribed = sorted(set(present_values(arr, background=False)) - {s.value for s in specs})
    if undescribed:
        raise InputError(f"label values {undescribed} are in the mask but not in label_info")
    first = source_proxy(source.first)
    # light copies: the UIDs every reference needs, checked (from the file meta when emptied)
    images = [first] + [source_proxy(ds, light=True) for ds in source.datasets[1:]]
    model = f"{model_name} {model_version}"
    ds = _base(
        first, series_number_for(series_number, first, DEFAULT_RTSTRUCT_SERIES_OFFSET), model
    )
    ds.FrameOfReferenceUID = first.FrameOfReferenceUID
    ds.PositionReferenceIndicator = first.get("PositionReferenceIndicator", "")
    ds.ReferencedFrameOfReferenceSequence = [_frame_of_reference(source, images)]
    items = [_roi(spec, n, arr, source, images, model) for n, spec in enumerate(specs, start=1)]
    ds.StructureSetROISequence = [roi for roi, _, _ in items]
    ds.ROIContourSequence = [contour for _, contour, _ in items]
    ds.RTROIObservationsSequence = [obs for _, _, obs in items]
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    return save_dicom(ds, path)
