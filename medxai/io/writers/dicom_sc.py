"""DICOM Secondary Capture outputs: the overlay picture per slice, and the DICOM study of a photo.

:func:`write_dicom_sc` writes one Secondary Capture Image (highdicom ``hd.sc.SCImage``) per slice
or frame of the overlay, in a new series of the source study, each referencing its source image
(SourceImageSequence, with ReferencedFrameNumber for a multi-frame source, and
ReferencedSeriesSequence). When the source has a patient geometry (Frame of Reference, position,
orientation), the SC carries the source slice's ImagePositionPatient, ImageOrientationPatient,
PixelSpacing and FrameOfReferenceUID, so that viewers can place it in 3D. Those attributes are
not part of the SC Image IOD: dciodvfy reports them as warnings ("Attribute is not present in
standard DICOM IOD ... Standard Extended SOP Class"), which the DICOM standard allows (PS3.4
B.1.3, Standard Extended SOP Class); there is no error.

:func:`create_photo_study` turns a photo (JPEG/PNG pixels, no patient) into a Secondary Capture in
a new study of a clearly marked placeholder patient, and returns a
:class:`~medxai.io.types.DicomSource`, so that a SEG and overlay SCs can reference the photo just
as they reference a DICOM input.

Both use highdicom's SCImage for the modules it builds (patient, study, series, equipment, SC
equipment, SC image, image pixel, SOP common) and add what it does not offer: the references,
BurnedInAnnotation, DerivationDescription, the plane geometry, PatientOrientation derived from the
orientation (SCImage only takes single letters) or copied (empty when unknown), and Laterality
(copied; otherwise present but empty, since a type 2C attribute that dciodvfy requires in SC
images and medxai cannot know).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
from highdicom.frame import encode_frame
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage

from medxai.errors import InputError, ProcessingError
from medxai.io.types import DicomSource
from medxai.io.writers._common import (
    NOT_FOR_DIAGNOSIS,
    SOFTWARE_NAME,
    SOFTWARE_VERSION,
    _fg_value,
    as_numpy,
    first_path,
    frame_geometry,
    new_uid,
    now,
    patient_orientation_letters,
    save_dicom,
    series_number_for,
    source_grid,
    source_proxy,
)
from medxai.io.writers._highdicom import memoise_iod_lookups

memoise_iod_lookups()  # highdicom asks the same IOD questions for every object

__all__ = [
    "write_dicom_sc",
    "create_photo_study",
    "PLACEHOLDER_PATIENT_NAME",
    "PLACEHOLDER_PATIENT_ID",
    "DEFAULT_SC_SERIES_OFFSET",
]

PLACEHOLDER_PATIENT_NAME = "MEDXAI^ANONYMOUS"
PLACEHOLDER_PATIENT_ID = "MEDXAI-NO-PATIENT"
_PLACEHOLDER_COMMENT = (
    "Placeholder patient made by medxai for a picture that came without patient data. "
    "This is not a real patient identity: reconcile it before use in a clinical archive."
)
#: Series number of the overlay SC series, when not given: the source's plus this.
DEFAULT_SC_SERIES_OFFSET = 2000

_SOURCE_PURPOSE = codes.DCM.SourceImageForImageProcessingOperation


def _medxai_equipment(description: str) -> hd.ContributingEquipment:
    # Processing Equipment (DCM 109102): "equipment that has processed composite instances to
    # create new composite instances", which is what medxai does (Modifying Equipment, 109103,
    # is for equipment that changes an instance while keeping it).
    return hd.ContributingEquipment(
        manufacturer=SOFTWARE_NAME,
        purpose_of_reference=codes.DCM.ProcessingEquipment,
        manufacturer_model_name=SOFTWARE_NAME,
        software_versions=SOFTWARE_VERSION,
        contribution_datetime=now(),
        contribution_description=description[:1024],
    )


def _sc_pixels(plane: np.ndarray) -> tuple[np.ndarray, str, int]:
    """(C, I, J) MONAI plane -> SC pixel array (rows, columns[, 3]), photometric, bits."""
    if plane.shape[0] == 3:
        if plane.dtype != np.uint8:
            raise InputError(f"a colour picture must be uint8; found {plane.dtype}")
        return np.ascontiguousarray(np.transpose(plane, (2, 1, 0))), "RGB", 8
    if plane.shape[0] == 1:
        grey = np.ascontiguousarray(plane[0].T)
        if grey.dtype == np.uint8:
            return grey, "MONOCHROME2", 8
        if grey.dtype == np.uint16:
            return grey, "MONOCHROME2", 16
        raise InputError(f"a greyscale picture must be uint8 or uint16; found {grey.dtype}")
    raise InputError(f"a picture must have 1 or 3 channels (C, I, J); found {plane.shape[0]}")


def _build_sc(
    pixels: np.ndarray,
    photometric: str,
    bits: int,
    ref: Dataset,
    *,
    series_uid: str,
    series_number: int,
    instance_number: int,
    series_description: str,
    equipment: Sequence[hd.ContributingEquipment],
    pixel_spacing: Sequence[float] | None = None,
) -> hd.sc.SCImage:
    try:
        sc = hd.sc.SCImage.from_ref_dataset(
            ref_dataset=ref,
            pixel_array=pixels,
            photometric_interpretation=photometric,
            bits_allocated=bits,
            coordinate_system=hd.CoordinateSystemNames.PATIENT,
            series_instance_uid=series_uid,
            series_number=series_number,
            sop_instance_uid=new_uid(),
            instance_number=instance_number,
            manufacturer=SOFTWARE_NAME,
            # replaced below by the real value (SCImage accepts single letters only)
            patient_orientation=("L", "P"),
            # highdicom annotates pixel_spacing as ints; the standard's (and its code's) are floats
            pixel_spacing=tuple(pixel_spacing) if pixel_spacing is not None else None,  # type: ignore[arg-type]
            transfer_syntax_uid=ExplicitVRLittleEndian,
            contributing_equipment=list(equipment),
            series_description=series_description[:64],
            manufacturer_model_name=SOFTWARE_NAME,
            software_versions=SOFTWARE_VERSION,
        )
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise ProcessingError(f"highdicom cannot build a Secondary Capture ({exc})") from exc
    try:
        # Every attribute of the Patient, General Study, Patient Study and clinical trial modules.
        sc.copy_patient_and_study_information(ref)
    except KeyError:
        pass  # a SOP class highdicom does not know: SCImage copied the main attributes already
    return sc


def _placeholder_ref(
    *, patient_name: str, patient_id: str, study_description: str, comment: str
) -> Dataset:
    """A reference dataset for a new study of the placeholder patient."""
    stamp = now()
    ref = Dataset()
    ref.SOPClassUID = SecondaryCaptureImageStorage
    ref.SOPInstanceUID = hd.UID()
    ref.StudyInstanceUID = hd.UID()
    ref.SeriesInstanceUID = hd.UID()
    ref.PatientName = patient_name
    ref.PatientID = patient_id
    ref.PatientBirthDate = ""
    ref.PatientSex = ""
    ref.PatientComments = comment
    ref.StudyDate = stamp.strftime("%Y%m%d")
    ref.StudyTime = stamp.strftime("%H%M%S")
    ref.StudyID = f"MX{stamp:%y%m%d%H%M%S}"
    ref.AccessionNumber = ""
    ref.ReferringPhysicianName = ""
    ref.StudyDescription = study_description[:64]
    ref.SpecificCharacterSet = "ISO_IR 192"
    ref.Modality = "OT"
    return ref


def _reference_items(ds: Dataset, frame: int | None) -> tuple[Dataset, Dataset]:
    """(SourceImageSequence item, ReferencedSeriesSequence item) for one source image/frame."""
    source_item = Dataset()
    source_item.ReferencedSOPClassUID = ds.SOPClassUID
    source_item.ReferencedSOPInstanceUID = ds.SOPInstanceUID
    if frame is not None:
        source_item.ReferencedFrameNumber = int(frame)
    source_item.PurposeOfReferenceCodeSequence = [hd.sr.CodedConcept.from_code(_SOURCE_PURPOSE)]
    instance_item = Dataset()
    instance_item.ReferencedSOPClassUID = ds.SOPClassUID
    instance_item.ReferencedSOPInstanceUID = ds.SOPInstanceUID
    series_item = Dataset()
    series_item.SeriesInstanceUID = ds.SeriesInstanceUID
    series_item.ReferencedInstanceSequence = [instance_item]
    return source_item, series_item


def _laterality(ds: Dataset) -> str:
    for kw in ("Laterality", "ImageLaterality"):
        value = str(ds.get(kw) or "")
        if value in ("R", "L"):
            return value
    return ""


@dataclass
class _OverlaySeries:
    """What every SC of one overlay series shares."""

    uid: str
    number: int
    description: str
    derivation: str
    equipment: list[hd.ContributingEquipment]
    study_ref: Dataset  # patient and study come from here (a full copy of the first source)


def _checked_overlay(rgb: Any) -> np.ndarray:
    arr = as_numpy(rgb)
    if arr.ndim == 3:
        arr = arr[..., None]
    if arr.ndim != 4 or arr.shape[0] != 3 or arr.dtype != np.uint8:
        raise InputError(
            f"the overlay must be uint8 of shape (3, I, J[, K]); found {arr.dtype} {arr.shape}"
        )
    return arr


def _is_mosaic(source: DicomSource | None, n: int) -> bool:
    """Several slices from one single-frame image (a Siemens mosaic): every SC references that
    image; the slice positions are not in the DICOM header, so no geometry is copied."""
    return source is not None and not source.is_multiframe and len(source.datasets) == 1 and n > 1


def _check_overlay_grid(arr: np.ndarray, source: DicomSource) -> None:
    if not source.datasets:
        raise InputError("the DICOM source holds no dataset")
    columns, rows, k = source_grid(source)
    expected = (columns, rows, arr.shape[3] if _is_mosaic(source, arr.shape[3]) else k)
    if arr.shape[1:] != expected:
        raise InputError(
            f"the overlay has shape {arr.shape[1:]} but the DICOM source is {expected} "
            "(columns, rows, slices/frames)",
            path=first_path(source),
        )


def _overlay_series(
    source: DicomSource | None,
    model_name: str,
    model_version: str,
    series_description: str,
    series_number: int | None,
    derivation_description: str | None,
) -> _OverlaySeries:
    derivation = derivation_description or (
        f"Overlay of the segmentation (contours) and saliency map (heat map) computed by the model "
        f"{model_name} {model_version} with {SOFTWARE_NAME} {SOFTWARE_VERSION}, burned into the "
        f"source image. {NOT_FOR_DIAGNOSIS}."
    )
    equipment = [_medxai_equipment(f"AI segmentation overlay; model {model_name} {model_version}")]
    uid = new_uid()
    if source is None:
        study_ref = _placeholder_ref(
            patient_name=PLACEHOLDER_PATIENT_NAME,
            patient_id=PLACEHOLDER_PATIENT_ID,
            study_description="medxai overlay of a picture without DICOM source",
            comment=_PLACEHOLDER_COMMENT,
        )
        number = int(series_number) if series_number is not None else DEFAULT_SC_SERIES_OFFSET
    else:
        study_ref = source_proxy(source.first)
        number = series_number_for(series_number, source.first, DEFAULT_SC_SERIES_OFFSET)
    return _OverlaySeries(uid, number, series_description, derivation, equipment, study_ref)


def _slice_source(
    source: DicomSource | None, k: int, mosaic: bool, study_ref: Dataset
) -> tuple[Dataset, int | None, dict[str, Any]]:
    """The reference dataset, source frame number and plane geometry of overlay slice ``k``:
    each SC's references, orientation and laterality come from its own source image (a light
    copy; the first image's full copy is reused)."""
    if source is None:
        return study_ref, None, {}
    ds, frame, geometry = frame_geometry(source, 0 if mosaic else k)
    ref = study_ref if ds is source.first else source_proxy(ds, light=True)
    return ref, frame, {} if mosaic else geometry


def _first_sc(
    pixels: np.ndarray, photometric: str, bits: int, series: _OverlaySeries, spacing: Any
) -> hd.sc.SCImage:
    sc = _build_sc(
        pixels,
        photometric,
        bits,
        series.study_ref,
        series_uid=series.uid,
        series_number=series.number,
        instance_number=1,
        series_description=series.description,
        equipment=series.equipment,
        pixel_spacing=spacing,
    )
    sc.ImageType = ["DERIVED", "SECONDARY"]
    sc.BurnedInAnnotation = "YES"
    sc.DerivationDescription = series.derivation[:1024]
    return sc


def _next_sc(sc: hd.sc.SCImage, pixels: np.ndarray, k: int, geometry: dict[str, Any]) -> None:
    """Turn the SC of the previous slice into the SC of slice ``k``.

    The other slices differ from the first only in what is set here and in
    :func:`_set_slice_attributes` (every per-slice attribute is set or removed on each pass), so
    the dataset built for the first slice is reused: several times faster than building each
    with highdicom.
    """
    sc.SOPInstanceUID = new_uid()
    sc.file_meta.MediaStorageSOPInstanceUID = sc.SOPInstanceUID
    sc.InstanceNumber = k + 1
    sc.PixelData = encode_frame(
        pixels,
        transfer_syntax_uid=sc.file_meta.TransferSyntaxUID,
        bits_allocated=sc.BitsAllocated,
        bits_stored=sc.BitsStored,
        photometric_interpretation=sc.PhotometricInterpretation,
        pixel_representation=sc.PixelRepresentation,
        planar_configuration=sc.get("PlanarConfiguration"),
    )
    if "PixelSpacing" in geometry:
        sc.PixelSpacing = geometry["PixelSpacing"]
    elif "PixelSpacing" in sc:
        del sc.PixelSpacing


_GEOMETRY_KEYWORDS = ("FrameOfReferenceUID", "ImagePositionPatient", "ImageOrientationPatient")
_TYPE2_GEOMETRY_KEYWORDS = ("PositionReferenceIndicator", "SliceThickness")


def _set_slice_attributes(
    sc: hd.sc.SCImage, ref: Dataset, frame: int | None, geometry: dict[str, Any], referenced: bool
) -> None:
    """References (when ``referenced``), plane geometry, PatientOrientation and Laterality."""
    if referenced:
        source_item, series_item = _reference_items(ref, frame)
        sc.SourceImageSequence = [source_item]
        sc.ReferencedSeriesSequence = [series_item]
    if all(kw in geometry for kw in (*_GEOMETRY_KEYWORDS, "PixelSpacing")):
        for kw in _GEOMETRY_KEYWORDS:
            setattr(sc, kw, geometry[kw])
        # Type 2 attributes of the Frame of Reference and Image Plane modules these bring in
        # (dicom3tools' dciodvfy of 2026 requires them; empty when the source does not say)
        sc.PositionReferenceIndicator = ref.get("PositionReferenceIndicator") or ""
        thickness = ref.get("SliceThickness")
        if thickness is None and frame is not None:
            thickness = _fg_value(ref, frame - 1, "PixelMeasuresSequence", "SliceThickness")
        sc.SliceThickness = thickness if thickness not in (None, "") else None
        sc.PatientOrientation = patient_orientation_letters(geometry["ImageOrientationPatient"])
    else:
        for kw in (*_GEOMETRY_KEYWORDS, *_TYPE2_GEOMETRY_KEYWORDS):
            if kw in sc:
                delattr(sc, kw)
        orientation = ref.get("PatientOrientation") if referenced else None
        # pydicom types the keyword as a list; an empty value is what the standard wants here
        value = list(orientation) if orientation and len(orientation) == 2 else ""
        sc.PatientOrientation = value  # type: ignore[assignment]
    sc.Laterality = _laterality(ref) if referenced else ""


def write_dicom_sc(
    rgb: Any,
    source: DicomSource | None,
    out_dir: str | Path,
    model_name: str,
    model_version: str,
    *,
    series_description: str = f"medxai overlay - {NOT_FOR_DIAGNOSIS}",
    series_number: int | None = None,
    derivation_description: str | None = None,
    filename_prefix: str = "overlay_",
) -> list[Path]:
    """Write the overlay as Secondary Capture images, one per slice/frame, in a new series.

    Args:
        rgb: overlay picture ``(3, I, J[, K])`` uint8 (MONAI order, as made by
            :func:`medxai.io.writers.png.overlay_rgb`); ``K`` matches the source slices/frames.
        source: the DICOM source of the input (see :class:`~medxai.io.types.DicomSource`); for a
            photo, the one :func:`create_photo_study` returned. ``None`` puts the overlay in a new
            study of the placeholder patient, without references.
        out_dir: folder for the files ``<filename_prefix>0001.dcm``, ...
        model_name, model_version: the model, named in DerivationDescription and the equipment.
        series_description: of the new series; says it is an AI result, not for diagnosis.
        series_number: of the new series (default: source series number + 2000).
        derivation_description: replaces the default DerivationDescription.
        filename_prefix: start of each file name.

    Returns:
        the paths written, in ``k`` order.

    Raises:
        InputError: a shape or dtype that does not fit, or a source header without UIDs.
        ProcessingError: highdicom refuses the input, or a file cannot be written.
    """
    arr = _checked_overlay(rgb)
    out_dir = Path(out_dir)
    n = arr.shape[3]
    mosaic = _is_mosaic(source, n)
    if source is not None:
        _check_overlay_grid(arr, source)
    series = _overlay_series(
        source,
        model_name,
        model_version,
        series_description,
        series_number,
        derivation_description,
    )
    paths = []
    sc: hd.sc.SCImage | None = None
    for k in range(n):
        pixels, photometric, bits = _sc_pixels(arr[:, :, :, k])
        ref, frame, geometry = _slice_source(source, k, mosaic, series.study_ref)
        if sc is None:
            sc = _first_sc(pixels, photometric, bits, series, geometry.get("PixelSpacing"))
        else:
            _next_sc(sc, pixels, k, geometry)
        _set_slice_attributes(sc, ref, frame, geometry, referenced=source is not None)
        paths.append(save_dicom(sc, out_dir / f"{filename_prefix}{k + 1:04d}.dcm"))
    return paths


def _photo_pixels(picture: Any) -> tuple[np.ndarray, str, int]:
    arr = as_numpy(picture)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise InputError(f"a photo must be (C, I, J); found shape {arr.shape}")
    return _sc_pixels(arr)


def create_photo_study(
    picture: Any,
    path: str | Path,
    *,
    source_name: str | None = None,
    patient_name: str = PLACEHOLDER_PATIENT_NAME,
    patient_id: str = PLACEHOLDER_PATIENT_ID,
    study_description: str = "medxai: picture imported without patient data",
    series_description: str = "Picture imported by medxai",
    series_number: int = 1,
) -> DicomSource:
    """Write a photo as a Secondary Capture in a new study of a placeholder patient.

    The patient is clearly marked as a placeholder (PatientName ``MEDXAI^ANONYMOUS``, PatientID
    ``MEDXAI-NO-PATIENT``, PatientComments saying so), the study is new, and the image has no
    Frame of Reference (a photo has no patient geometry) and an empty PatientOrientation.

    Args:
        picture: the photo ``(C, I, J)`` (MONAI order: ``I`` along columns, ``J`` along rows),
            3 channels uint8 (RGB) or 1 channel uint8/uint16 (MONOCHROME2).
        path: the DICOM file to write.
        source_name: the photo's file name, recorded in ImageComments.
        patient_name, patient_id: the placeholder identity.
        study_description, series_description, series_number: of the new study and series.

    Returns:
        a :class:`DicomSource` of the written file (header without pixel data), to pass to
        :func:`~medxai.io.writers.dicom_seg.write_dicom_seg` and :func:`write_dicom_sc`.

    Raises:
        InputError: a picture of the wrong shape or dtype.
        ProcessingError: the file cannot be written.
    """
    pixels, photometric, bits = _photo_pixels(picture)
    path = Path(path)
    ref = _placeholder_ref(
        patient_name=patient_name,
        patient_id=patient_id,
        study_description=study_description,
        comment=_PLACEHOLDER_COMMENT,
    )
    equipment = [_medxai_equipment("Conversion of a picture file to DICOM")]
    sc = _build_sc(
        pixels, photometric, bits, ref, series_uid=new_uid(), series_number=int(series_number),
        instance_number=1, series_description=series_description, equipment=equipment,
    )  # fmt: skip
    sc.ImageType = ["ORIGINAL", "SECONDARY"]
    sc.BurnedInAnnotation = "NO"
    # empty (type 2); pydicom types the keyword as a list
    sc.PatientOrientation = ""  # type: ignore[assignment]
    sc.Laterality = ""
    if source_name:
        sc.ImageComments = f"Imported by {SOFTWARE_NAME} {SOFTWARE_VERSION} from {source_name}"
    save_dicom(sc, path)
    header = pydicom.dcmread(path, stop_before_pixels=True)
    return DicomSource(datasets=[header], paths=[path], frame_numbers=None)
