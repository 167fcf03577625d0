"""What the reader returns: the image as a MONAI ``MetaTensor`` plus, for DICOM, its sources.

Conventions (the same as MONAI's ``LoadImage`` + ``EnsureChannelFirst``):

- The image tensor is channel-first ``(C, I, J[, K])``. Spatial index ``i`` runs along image
  columns (DICOM's row direction, the first three values of ImageOrientationPatient), ``j`` along
  rows, ``k`` across slices/frames in the order of increasing position along the slice normal
  ``cross(row_dir, col_dir)``. For a picture, ``(C, W, H)``.
- ``image.affine`` maps ``(i, j, k, 1)`` to RAS millimetres (MONAI's convention). DICOM's LPS is
  converted once, in :mod:`medxai.io.geometry`.
- ``image.meta`` holds only plain values (strings, numbers, lists), so that MONAI's collation and
  ``Invertd`` work: see :data:`META_KEYS`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from monai.data import MetaTensor

__all__ = ["DicomSource", "LoadedImage", "META_KEYS"]

#: Keys medxai puts in ``MetaTensor.meta`` (besides MONAI's own ``affine``, ``spatial_shape``,
#: ``original_affine``, ``filename_or_obj``, ``space``, ``original_channel_dim``).
META_KEYS = {
    "medxai_form": "picture | dicom | dicom-multiframe | dicom-series | nifti | nrrd | mha | ...",
    "modality": "DICOM modality code (CT, MR, XC, OT, ...) or '' when unknown",
    "photometric_interpretation": "of the stored pixels (DICOM), or RGB / MONOCHROME2 for others",
    "original_shape": "spatial shape as read, before any transform",
    "spacing": "voxel size in mm (pixels for pictures) along i, j[, k]",
    "axis_codes": "orientation as three RAS letters, e.g. 'LPS' (nibabel aff2axcodes)",
    "has_patient_geometry": "True when the affine is a real patient-space geometry",
    "sop_class_uid": "DICOM SOP Class UID of the (first) source",
    "study_instance_uid": "DICOM",
    "series_instance_uid": "DICOM",
    "frame_of_reference_uid": "DICOM, '' when absent",
    "series_description": "DICOM",
    "num_files": "number of files the image was assembled from",
    "geometry_warnings": "list of strings: missing slices, uneven spacing, tilt, ...",
    "intensity": "'display' (what a viewer shows: pictures, and DICOM radiographs read through the "
    "Modality LUT, VOI LUT/window and MONOCHROME1 inversion as 8-bit 0..255) or "
    "'modality' (modality values: HU, MR signal, stored values)",
    "display": "(DICOM read as displayed) the steps applied: modality_lut, voi, window_center, "
    "window_width, voi_lut_function, inverted, ... (medxai.io.dicom.display)",
    "pixel_spacing_source": "(DICOM without patient geometry) PixelSpacing, ImagerPixelSpacing or "
    "NominalScannedPixelSpacing: which attribute gave 'spacing'",
    "estimated_radiographic_magnification_factor": "(radiographs, when the file gives it)",
    "patient_plane_spacing": "(radiographs) ImagerPixelSpacing / magnification factor, mm [row, col]",
}


@dataclass
class DicomSource:
    """The DICOM objects an image was read from, for writing derived objects.

    Attributes:
        datasets: the source headers (pixel data removed). For a series, one per slice in ``k``
            order; for a single file (single- or multi-frame), one element.
        paths: the file of each element of ``datasets``.
        frame_numbers: for a multi-frame source, the 1-based frame number at each ``k``;
            ``None`` otherwise.
    """

    datasets: list[Any]
    paths: list[Path]
    frame_numbers: list[int] | None = None

    @property
    def is_multiframe(self) -> bool:
        return self.frame_numbers is not None

    @property
    def first(self) -> Any:
        return self.datasets[0]


@dataclass
class LoadedImage:
    """An image read by :func:`medxai.io.readers.load_image`.

    Attributes:
        image: the pixels as a ``MetaTensor`` (see the module docstring for axes and meta).
        dicom: the DICOM sources, or ``None`` for non-DICOM inputs.
        path: the path the user gave (file or folder).
    """

    image: MetaTensor
    dicom: DicomSource | None
    path: Path
    extra: dict[str, Any] = field(default_factory=dict)
