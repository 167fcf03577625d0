"""Geometry: the one place where DICOM's LPS patient coordinates become MONAI's RAS affines.

An affine maps voxel indices ``(i, j, k, 1)`` to millimetres. medxai's arrays index ``i`` along
image columns, ``j`` along rows and ``k`` across slices (see :mod:`medxai.io.types`), so for DICOM

    LPS(i, j, k) = IPP_0 + i * dc * row_cosines + j * dr * col_cosines + k * slice_step

where ``row_cosines``/``col_cosines`` are ImageOrientationPatient's two triplets, ``dr, dc`` are
PixelSpacing (row spacing first, as DICOM stores it) and ``slice_step`` is the displacement from
one slice to the next. RAS = diag(-1, -1, 1) @ LPS.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike

__all__ = [
    "LPS_TO_RAS",
    "lps_to_ras_affine",
    "ras_to_lps_affine",
    "dicom_affine_lps",
    "slice_normal",
    "axis_codes",
    "spacing_from_affine",
]

#: Flips x and y: converts an LPS affine to RAS (and back; it is its own inverse).
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def lps_to_ras_affine(affine_lps: np.ndarray) -> np.ndarray:
    """RAS affine from an LPS one (both 4x4)."""
    return LPS_TO_RAS @ np.asarray(affine_lps, dtype=np.float64)


def ras_to_lps_affine(affine_ras: np.ndarray) -> np.ndarray:
    """LPS affine from a RAS one (both 4x4)."""
    return LPS_TO_RAS @ np.asarray(affine_ras, dtype=np.float64)


def slice_normal(orientation: ArrayLike) -> np.ndarray:
    """Unit normal ``cross(row_cosines, col_cosines)`` of an ImageOrientationPatient value."""
    iop = np.asarray(orientation, dtype=np.float64)
    n = np.cross(iop[:3], iop[3:])
    norm = np.linalg.norm(n)
    return n / norm if norm > 0 else n


def dicom_affine_lps(
    orientation: ArrayLike,
    position: ArrayLike,
    pixel_spacing: Sequence[float],
    slice_step: ArrayLike | None = None,
    slice_thickness: float | None = None,
) -> np.ndarray:
    """4x4 LPS affine of a DICOM slice stack (see the module docstring).

    Args:
        orientation: ImageOrientationPatient (row cosines, then column cosines).
        position: ImagePositionPatient of the first slice (k = 0), mm.
        pixel_spacing: PixelSpacing ``[row spacing, column spacing]``, mm.
        slice_step: displacement from slice k to k+1, mm (may be oblique to the normal: gantry
            tilt). When ``None`` (one slice), the normal times ``slice_thickness`` (or 1 mm).
    """
    iop = np.asarray(orientation, dtype=np.float64)
    dr, dc = (float(v) for v in pixel_spacing)
    aff = np.eye(4)
    aff[:3, 0] = iop[:3] * dc
    aff[:3, 1] = iop[3:] * dr
    if slice_step is None:
        thick = float(slice_thickness) if slice_thickness else 1.0
        aff[:3, 2] = slice_normal(iop) * thick
    else:
        aff[:3, 2] = np.asarray(slice_step, dtype=np.float64)
    aff[:3, 3] = np.asarray(position, dtype=np.float64)
    return aff


def spacing_from_affine(affine: np.ndarray, ndim: int = 3) -> tuple[float, ...]:
    """Voxel size along each index axis (column norms of the affine), mm."""
    a = np.asarray(affine, dtype=np.float64)
    return tuple(float(np.linalg.norm(a[:3, d])) for d in range(ndim))


def axis_codes(affine: np.ndarray) -> str:
    """Orientation letters of the index axes in RAS terms (nibabel's ``aff2axcodes``), e.g. 'LPS'."""
    import nibabel as nib

    return "".join(nib.aff2axcodes(np.asarray(affine, dtype=np.float64)))
