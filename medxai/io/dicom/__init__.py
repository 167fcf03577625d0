"""DICOM: find files, group them into series, sort slices, check the stack, decode pixels.

Slices are sorted by projecting ImagePositionPatient onto the slice normal, never by
InstanceNumber or file name. Missing slices, uneven spacing, gantry tilt, duplicate positions and
mixed orientations are detected: the first two and tilt become ``geometry_warnings`` in the image
meta; duplicates at one position and mixed orientations or sizes are errors, because no single
grid can hold them.
"""

from __future__ import annotations

import struct
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileDataset
from pydicom.errors import InvalidDicomError

from medxai.errors import CorruptInputError, SeriesError
from medxai.io.dicom.pixels import decode_stored
from medxai.io.geometry import dicom_affine_lps, slice_normal

__all__ = [
    "is_dicom_file",
    "read_header",
    "SeriesKey",
    "scan_folder",
    "group_series",
    "sort_slices",
    "StackGeometry",
    "decode_frames",
    "decode_stored",
    "dicomdir_files",
    "find_case_insensitive",
    "frame_item",
    "has_frame_item",
]

# Storage classes that hold no image pixels medxai can segment.
NON_IMAGE_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.66.4": "Segmentation Storage",
    "1.2.840.10008.5.1.4.1.1.66.7": "Label Map Segmentation Storage",
    "1.2.840.10008.5.1.4.1.1.481.3": "RT Structure Set Storage",
    "1.2.840.10008.5.1.4.1.1.481.2": "RT Dose Storage",
    "1.2.840.10008.5.1.4.1.1.481.5": "RT Plan Storage",
    "1.2.840.10008.5.1.4.1.1.88.11": "Basic Text SR",
    "1.2.840.10008.5.1.4.1.1.88.22": "Enhanced SR",
    "1.2.840.10008.5.1.4.1.1.88.33": "Comprehensive SR",
    "1.2.840.10008.5.1.4.1.1.88.34": "Comprehensive 3D SR",
    "1.2.840.10008.5.1.4.1.1.30": "Parametric Map Storage",
    "1.2.840.10008.1.3.10": "Media Storage Directory (DICOMDIR)",
    "1.2.840.10008.5.1.4.1.1.104.1": "Encapsulated PDF Storage",
    "1.2.840.10008.5.1.4.1.1.91.1": "Microscopy Bulk Simple Annotations",
}


def is_dicom_file(path: str | Path) -> bool:
    """Whether the file looks like DICOM: 'DICM' at byte 128, or a plausible raw data set.

    Files without the 128-byte preamble and file meta (old ACR-NEMA style) are recognised by
    reading their first element: group 0x0008 little-endian implicit or explicit VR.
    """
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    if len(head) >= 132 and head[128:132] == b"DICM":
        return True
    if len(head) < 8:
        return False
    # no preamble: accept when a forced parse finds standard header groups
    try:
        ds = pydicom.dcmread(str(path), force=True, stop_before_pixels=True, defer_size=1024)
        groups = {tag.group for tag in ds.keys()}
    except Exception:  # noqa: BLE001 - any parse failure just means "not DICOM"
        return False
    return len(groups & {0x0008, 0x0010, 0x0018, 0x0020, 0x0028}) >= 2


def read_header(path: str | Path, *, defer_pixels: bool = True) -> FileDataset:
    """Read a DICOM file; with ``defer_pixels`` large values (Pixel Data) stay on disk until used.

    Raises:
        CorruptInputError: the file is not readable as DICOM.
    """
    try:
        ds = pydicom.dcmread(str(path), force=True, defer_size="512 KB" if defer_pixels else None)
        _ensure_transfer_syntax(ds)
        return ds
    except (
        InvalidDicomError,
        EOFError,
        ValueError,
        KeyError,
        TypeError,
        AttributeError,
        NotImplementedError,
        OverflowError,
        struct.error,
    ) as exc:
        raise CorruptInputError(
            f"cannot be parsed as DICOM ({type(exc).__name__}: {exc})",
            path=path,
            hint="the file may be truncated or not DICOM",
        ) from exc
    except OSError as exc:
        raise CorruptInputError(f"cannot be read ({exc})", path=path) from exc


def _ensure_transfer_syntax(ds: Dataset) -> None:
    """Files without file meta (ACR-NEMA style) get the transfer syntax they were parsed with."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    meta = getattr(ds, "file_meta", None)
    if meta is not None and "TransferSyntaxUID" in meta:
        return
    if meta is None:
        ds.file_meta = meta = FileMetaDataset()
    implicit, little = ds.original_encoding
    if implicit is None:
        return
    meta.TransferSyntaxUID = (
        ImplicitVRLittleEndian
        if implicit
        else ExplicitVRLittleEndian
        if little
        else ExplicitVRBigEndian
    )


@dataclass(frozen=True)
class SeriesKey:
    """Identity of one image stack: series, and (within a series) size and orientation.

    Grouping is by Series Instance UID, which DICOM makes globally unique; the study is carried
    along but not used to split (some exporters write a new Study UID per file by mistake).
    """

    series_uid: str
    rows: int
    columns: int
    orientation: tuple[float, ...] | None


def _orientation_key(ds: Dataset) -> tuple[float, ...] | None:
    iop = ds.get("ImageOrientationPatient")
    if iop is None or len(iop) != 6:
        return None
    return tuple(round(float(v), 4) for v in iop)


def dicomdir_files(path: str | Path) -> list[Path]:
    """Files referenced by a DICOMDIR (IMAGE records and other instance records), existing ones."""
    path = Path(path)
    try:
        ddir = pydicom.dcmread(str(path), force=True)
    except (InvalidDicomError, EOFError, ValueError, OSError) as exc:
        raise CorruptInputError(f"DICOMDIR cannot be read ({exc})", path=path) from exc
    root = path.parent
    files = []
    for rec in ddir.get("DirectoryRecordSequence", []):
        ref = rec.get("ReferencedFileID")
        if ref is None:
            continue
        parts = [ref] if isinstance(ref, str) else list(ref)
        exact = root.joinpath(*parts)
        # media often upper-case names
        candidate = exact if exact.exists() else find_case_insensitive(root, parts)
        if candidate is not None and candidate.is_file():
            files.append(candidate)
    return files


def find_case_insensitive(root: Path, parts: Sequence[str]) -> Path | None:
    """The path ``root/parts...`` matched without regard to case (media often upper-case names
    that the file system keeps in lower case), or ``None`` when there is none."""
    cur = root
    for part in parts:
        if not cur.is_dir():
            return None
        match = next((c for c in cur.iterdir() if c.name.lower() == part.lower()), None)
        if match is None:
            return None
        cur = match
    return cur


def frame_item(ds: Dataset, index: int, keyword: str) -> Any:
    """A functional group macro item (e.g. ``"PlanePositionSequence"``) for 0-based frame
    ``index`` of an enhanced multi-frame object: the per-frame one, else the shared one, else
    ``None``."""
    pf = ds.get("PerFrameFunctionalGroupsSequence")
    if pf and index < len(pf):
        seq = pf[index].get(keyword)
        if seq:
            return seq[0]
    sh = ds.get("SharedFunctionalGroupsSequence")
    if sh:
        seq = sh[0].get(keyword)
        if seq:
            return seq[0]
    return None


def has_frame_item(ds: Dataset, keyword: str) -> bool:
    """Whether the first frame of an enhanced multi-frame object has ``keyword`` (per-frame or
    shared), e.g. whether it has plane positions."""
    return frame_item(ds, 0, keyword) is not None


@dataclass
class ScanResult:
    """DICOM files found under a folder, read header-first, and what was passed over."""

    datasets: list[tuple[Path, FileDataset]] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)


def scan_folder(folder: str | Path, files: Iterable[Path] | None = None) -> ScanResult:
    """Read every DICOM file under ``folder`` (recursively, or just ``files``); note the rest."""
    folder = Path(folder)
    if files is None:
        files = sorted(p for p in folder.rglob("*") if p.is_file())
    result = ScanResult()
    for p in files:
        if p.name.upper() == "DICOMDIR" or p.name.startswith("."):
            result.skipped.append((p, "DICOMDIR or hidden file"))
            continue
        if not is_dicom_file(p):
            result.skipped.append((p, "not DICOM"))
            continue
        try:
            ds = read_header(p)
        except CorruptInputError as exc:
            result.skipped.append((p, exc.detail))
            continue
        sop = str(ds.get("SOPClassUID", ""))
        if sop in NON_IMAGE_SOP_CLASSES or "PixelData" not in ds and "FloatPixelData" not in ds:
            what = NON_IMAGE_SOP_CLASSES.get(sop, "no pixel data")
            result.skipped.append((p, f"not an image ({what})"))
            continue
        result.datasets.append((p, ds))
    return result


def group_series(
    items: Sequence[tuple[Path, FileDataset]],
) -> dict[SeriesKey, list[tuple[Path, FileDataset]]]:
    """Group files by study, series, image size and orientation."""
    groups: dict[SeriesKey, list[tuple[Path, FileDataset]]] = defaultdict(list)
    for p, ds in items:
        key = SeriesKey(
            series_uid=str(ds.get("SeriesInstanceUID", "")),
            rows=int(ds.get("Rows", 0) or 0),
            columns=int(ds.get("Columns", 0) or 0),
            orientation=_orientation_key(ds),
        )
        groups[key].append((p, ds))
    return dict(groups)


def describe_groups(groups: dict[SeriesKey, list[tuple[Path, FileDataset]]]) -> str:
    """One line per group, for error messages that list what a folder holds."""
    lines = []
    for key, items in groups.items():
        ds = items[0][1]
        lines.append(
            f"  - series {key.series_uid or '?'} ({ds.get('Modality', '?')}, "
            f"{str(ds.get('SeriesDescription', '')).strip() or 'no description'}): "
            f"{len(items)} file(s) {key.columns}x{key.rows}"
            + (f", orientation {list(key.orientation)}" if key.orientation else "")
            + f", e.g. {items[0][0]}"
        )
    return "\n".join(lines)


@dataclass
class StackGeometry:
    """Where the slices of a stack lie: their order, affine and what is odd about them."""

    order: list[int]
    affine_lps: np.ndarray
    warnings: list[str]
    has_patient_geometry: bool


def _pixel_spacing(ds: Dataset) -> tuple[float, float] | None:
    for kw in ("PixelSpacing", "ImagerPixelSpacing", "NominalScannedPixelSpacing"):
        v = ds.get(kw)
        if v is not None and len(v) == 2:
            try:
                r, c = float(v[0]), float(v[1])
            except (TypeError, ValueError):
                continue
            if r > 0 and c > 0:
                return r, c
    return None


def sort_slices(
    positions: Sequence[Sequence[float]],
    orientation: Sequence[float],
    pixel_spacing: Sequence[float],
    slice_thickness: float | None = None,
    *,
    what: str = "series",
    tol: float = 0.01,
) -> StackGeometry:
    """Order slices along the normal and derive the stack's LPS affine; check the spacing.

    Args:
        positions: ImagePositionPatient of each slice (unsorted), mm.
        orientation: the common ImageOrientationPatient.
        pixel_spacing: PixelSpacing ``[row, column]``, mm.
        tol: relative spacing deviation tolerated before "uneven spacing" is reported.

    Raises:
        SeriesError: two slices share a position.
    """
    pos = np.asarray(positions, dtype=np.float64).reshape(-1, 3)
    normal = slice_normal(orientation)
    proj = pos @ normal
    order = [int(i) for i in np.argsort(proj, kind="stable")]
    warnings: list[str] = []
    if len(order) == 1:
        aff = dicom_affine_lps(orientation, pos[0], pixel_spacing, None, slice_thickness)
        return StackGeometry(order, aff, warnings, True)
    sp = proj[order]
    gaps = np.diff(sp)
    dup = np.where(np.abs(gaps) < 1e-3)[0]
    if dup.size:
        at = ", ".join(f"{sp[i]:.3f}" for i in dup[:5])
        raise SeriesError(
            f"{len(dup)} pair(s) of slices of this {what} share a position (at {at} mm along the "
            "normal): it holds several volumes (echoes, phases, time points) or duplicates",
            hint="split the series (e.g. by EchoTime, TemporalPositionIdentifier, AcquisitionNumber"
            ") into folders of one volume each",
        )
    first, last = pos[order[0]], pos[order[-1]]
    step = (last - first) / (len(order) - 1)
    median_gap = float(np.median(gaps))
    if np.max(np.abs(gaps - median_gap)) > tol * median_gap:
        missing = [(float(sp[i]), float(sp[i + 1])) for i in np.where(gaps > 1.5 * median_gap)[0]]
        if missing:
            warnings.append(
                f"missing slice(s): gap(s) larger than the usual {median_gap:.3f} mm between "
                + ", ".join(f"{a:.2f}..{b:.2f}" for a, b in missing[:5])
                + " mm; the volume's grid uses the mean spacing and is not exact there"
            )
        warnings.append(
            f"uneven slice spacing: {gaps.min():.3f} to {gaps.max():.3f} mm (median "
            f"{median_gap:.3f}); the affine uses the mean, {np.linalg.norm(step):.3f} mm"
        )
    # gantry tilt: the slice displacement is not along the normal
    step_dir = step / (np.linalg.norm(step) or 1.0)
    angle = float(np.degrees(np.arccos(np.clip(abs(step_dir @ normal), -1.0, 1.0))))
    if angle > 0.01:
        warnings.append(
            f"gantry tilt or sheared stack: slices advance {angle:.2f} degrees off the normal; the "
            "affine keeps the true (sheared) slice positions"
        )
    aff = dicom_affine_lps(orientation, first, pixel_spacing, step)
    return StackGeometry(order, aff, warnings, True)


# ----------------------------------------------------------------------------------------------
# pixels
# ----------------------------------------------------------------------------------------------


def lps_identity(pixel_spacing: Sequence[float] | None) -> np.ndarray:
    """LPS affine of a grid without patient geometry: identity directions, origin 0, spacing
    ``[row, column]`` (mm, or 1 when unknown). This is how ITK and 3D Slicer place 2D pictures."""
    dr, dc = pixel_spacing or (1.0, 1.0)
    return np.diag([float(dc), float(dr), 1.0, 1.0])


def _needs_float(slopes: Iterable[float], intercepts: Iterable[float]) -> bool:
    return any(s != 1.0 or not float(i).is_integer() for s, i in zip(slopes, intercepts))


def _rescale(ds: Dataset, frame_index: int | None = None) -> tuple[float, float]:
    """Rescale slope and intercept of a (frame of a) data set; identity when absent."""
    src: Any = ds
    if frame_index is not None:
        for seq_kw in ("PerFrameFunctionalGroupsSequence", "SharedFunctionalGroupsSequence"):
            seq = ds.get(seq_kw)
            if not seq:
                continue
            item = seq[frame_index] if seq_kw.startswith("PerFrame") else seq[0]
            pvt = item.get("PixelValueTransformationSequence")
            if pvt:
                src = pvt[0]
                break
    slope = src.get("RescaleSlope", 1.0)
    intercept = src.get("RescaleIntercept", 0.0)
    try:
        return float(slope if slope not in (None, "") else 1.0), float(
            intercept if intercept not in (None, "") else 0.0
        )
    except (TypeError, ValueError):
        return 1.0, 0.0


def decode_frames(ds: Dataset, path: str | Path) -> np.ndarray:
    """Decode all frames of one data set to ``(frames, rows, cols, samples)``, stored values.

    Colour (YBR_*) becomes RGB and palette colour is expanded to RGB; MONOCHROME1 is inverted to
    MONOCHROME2 sense within the stored range (``lo + hi - v``: ``2**BitsStored - 1 - v`` unsigned,
    ``-1 - v`` signed). Modality LUT (rescale) is not applied here; inverting the stored value
    before a linear rescale is the same as inverting within the rescaled range, which is what
    highdicom's ``Image.get_frame(apply_presentation_lut=True)`` gives.

    Raises:
        UnsupportedInputError: no installed decoder decodes it (the message names the transfer
            syntax, the decoders tried and what each said; see :mod:`medxai.io.dicom.pixels`).
        CorruptInputError: the pixel data is truncated or the Image Pixel module incomplete.
    """
    # required attributes that old (ACR-NEMA era) files omit: assume plain greyscale
    if "SamplesPerPixel" not in ds:
        ds.SamplesPerPixel = 1
    if "PhotometricInterpretation" not in ds and int(ds.SamplesPerPixel or 1) == 1:
        ds.PhotometricInterpretation = "MONOCHROME2"
    arr = decode_stored(ds, path)
    nframes = int(ds.get("NumberOfFrames", 1) or 1)
    spp = int(ds.get("SamplesPerPixel", 1) or 1)
    pi = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if pi == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        arr = apply_color_lut(arr, ds)
        spp = 3
    if spp == 1:
        arr = arr.reshape((nframes, arr.shape[-2], arr.shape[-1], 1))
    else:
        arr = arr.reshape((nframes,) + arr.shape[-3:])
    if pi == "MONOCHROME1":
        bits = int(ds.get("BitsStored", 16) or 16)
        if int(ds.get("PixelRepresentation", 0) or 0) == 0:
            arr = (2**bits - 1) - arr.astype(np.int64)
        else:
            arr = -1 - arr.astype(np.int64)  # the signed range -2**(b-1) .. 2**(b-1)-1 reversed
    return arr


def apply_modality_lut(
    frames: np.ndarray, slopes: Sequence[float], intercepts: Sequence[float]
) -> np.ndarray:
    """Apply per-frame rescale to ``(frames, rows, cols, samples)``; keeps integers when exact."""
    if not _needs_float(slopes, intercepts):
        if all(i == 0 for i in intercepts):
            return frames if frames.dtype != np.int64 else _shrink_int(frames)
        inter = np.asarray(intercepts, dtype=np.int64)
        raw_lo, raw_hi = int(frames.min()), int(frames.max())
        lo, hi = raw_lo + int(inter.min()), raw_hi + int(inter.max())
        # one conversion into the smallest type that holds both raw and rescaled values
        dt = next(
            (
                t
                for t in (np.int16, np.int32)
                if np.iinfo(t).min <= min(lo, raw_lo) and max(hi, raw_hi) <= np.iinfo(t).max
            ),
            np.int64,
        )
        out = frames.astype(dt)
        if np.all(inter == inter[0]):
            out += dt(inter[0])
        else:
            out += inter.astype(dt)[:, None, None, None]
        return out
    real = frames.astype(np.float32)
    real *= np.asarray(slopes, dtype=np.float32)[:, None, None, None]
    real += np.asarray(intercepts, dtype=np.float32)[:, None, None, None]
    return real


def _shrink_int(arr: np.ndarray) -> np.ndarray:
    lo, hi = int(arr.min()), int(arr.max())
    for dt in (np.uint8, np.int16, np.uint16, np.int32):
        info = np.iinfo(dt)
        if info.min <= lo and hi <= info.max:
            return arr.astype(dt, copy=False)
    return arr.astype(np.float64)
