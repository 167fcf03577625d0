"""Scan a PACS export: read every file's DICOM header (never its pixels), in parallel; group the
image files into studies, series and stacks; decide which stacks fit a model.

Everything here is header-only: :func:`scan_file` reads with ``stop_before_pixels`` and checks,
from the Pixel Data element's declared length and the file size, that native (uncompressed) pixel
data is complete, so truncated files are found without decoding them.

A *stack* is what one run of the pipeline segments: the slices of a series that share image size,
orientation and colour (and, when several volumes share slice positions, echo/acquisition/temporal
index); a multi-frame object; or one 2D image (a file without patient geometry, such as a photo,
a secondary capture or a single projection radiograph). Files without a SeriesInstanceUID
(exports de-identified down to empty UIDs) are grouped by folder, as ``medxai segment FOLDER``
reads them.
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import multiprocessing
import os
import re
import struct
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "FileInfo",
    "Stack",
    "ScanOutcome",
    "ModelRequirements",
    "list_files",
    "scan_file",
    "scan_files",
    "group_stacks",
    "fit_reason",
    "scan_export",
]

#: ``FileInfo.kind`` values.
KINDS = ("image", "empty", "hidden", "not-dicom", "dicomdir", "non-image", "corrupt", "duplicate")

_PICTURE_MAGIC = (
    (b"\xff\xd8\xff", "a JPEG picture"),
    (b"\x89PNG\r\n\x1a\n", "a PNG picture"),
    (b"II*\x00", "a TIFF picture"),
    (b"MM\x00*", "a TIFF picture"),
    (b"%PDF", "a PDF document"),
    (b"PK\x03\x04", "a ZIP archive"),
    (b"\x1f\x8b", "gzip-compressed data"),
)
_DICOMDIR_SOP = "1.2.840.10008.1.3.10"
_DEFLATED_TS = ("1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.8.1")
_LONG_VRS = {
    b"OB",
    b"OD",
    b"OF",
    b"OL",
    b"OV",
    b"OW",
    b"SQ",
    b"UC",
    b"UN",
    b"UR",
    b"UT",
    b"SV",
    b"UV",
}
_PIXEL_TAGS = {(0x7FE0, 0x0010), (0x7FE0, 0x0008), (0x7FE0, 0x0009)}
# header fields of manifests written before "volume_attributes" -> their DICOM keyword
_OLD_SPLIT_FIELDS = {
    "echo_numbers": "EchoNumbers",
    "acquisition_number": "AcquisitionNumber",
    "temporal_position": "TemporalPositionIdentifier",
    "trigger_time": "TriggerTime",
    "image_type": "ImageType",
}


@dataclass
class FileInfo:
    """What the header scan learned about one file (plain values only: it crosses processes).

    Attributes:
        path: POSIX path relative to the export root.
        size: bytes; ``mtime_ns``: modification time, ns (with ``size``, the cache key of a rescan).
        kind: one of :data:`KINDS`; only ``image`` files go into stacks.
        reason: why a file is not an image to process (``None`` for images).
        failed: the file is DICOM but damaged (truncated, unparsable): a failure, not a skip.
        header: the header fields grouping and model selection use (``None`` unless DICOM).
        seconds: time spent reading it.
    """

    path: str
    size: int
    mtime_ns: int
    kind: str
    reason: str | None = None
    failed: bool = False
    header: dict[str, Any] | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Stack:
    """One image the pipeline segments: a volume, a multi-frame object or a 2D image.

    Attributes:
        id: stable identity (hex), the same on every scan of the same export.
        files: relative paths of its files, sorted by name (the reader sorts slices by position).
        form: ``volume`` (several single-frame slices), ``multiframe`` or ``image`` (2D).
        dims: 3 for a volume or multi-frame object with more than one frame, else 2.
        channels: 3 for colour (RGB, YBR, palette colour), else 1.
        output_name: the result folder, relative to the output root: ``<study>/<series>``, made of
            hashes, digits and a sanitised modality only, never of raw header text.
    """

    id: str
    study_uid: str
    series_uid: str
    modality: str
    series_number: int | None
    description: str
    study_date: str
    files: list[str]
    form: str
    dims: int
    n_slices: int
    rows: int
    columns: int
    channels: int
    output_name: str
    fingerprint: str = ""

    def describe(self) -> str:
        what = {
            "volume": f"volume of {self.n_slices} slices",
            "multiframe": f"multi-frame object of {self.n_slices} frames",
            "image": "2D image",
        }[self.form]
        return f"{self.modality or '?'} {what} {self.columns}x{self.rows}"


@dataclass
class ModelRequirements:
    """What a model takes: spatial dims (2 or 3), channels (1 or 3), modality codes (empty: any)."""

    spatial_dims: int
    channels: int
    modalities: tuple[str, ...] = ()

    @classmethod
    def from_bundle(cls, bundle: Any) -> ModelRequirements:
        mods = bundle.config.get("input", {}).get("modalities") or []
        return cls(
            int(bundle.spatial_dims), int(bundle.in_channels), tuple(str(m).upper() for m in mods)
        )


@dataclass
class ScanOutcome:
    """All files of an export and the stacks their images form."""

    root: Path
    files: list[FileInfo]
    stacks: list[Stack]
    seconds: float = 0.0
    headers_read: int = 0

    @property
    def files_per_second(self) -> float:
        return len(self.files) / self.seconds if self.seconds > 0 else 0.0


# ---------------------------------------------------------------------------------------------
# files
# ---------------------------------------------------------------------------------------------


def list_files(root: str | Path, exclude: Iterable[str | Path] = ()) -> list[str]:
    """Every regular file under ``root`` (recursively, symlinked folders not followed), as POSIX
    paths relative to ``root``, sorted; folders in ``exclude`` (e.g. the output) are left out."""
    root = Path(root)
    excluded = {os.path.realpath(p) for p in exclude}
    out: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(
            d for d in dirnames if os.path.realpath(os.path.join(dirpath, d)) not in excluded
        )
        rel = os.path.relpath(dirpath, root)
        for name in filenames:
            full = os.path.join(dirpath, name)
            if os.path.isfile(full):
                out.append(name if rel == "." else Path(rel, name).as_posix())
    return sorted(out)


def _str(ds: Any, kw: str) -> str:
    v = ds.get(kw)
    return "" if v is None else str(v).strip()


def _int(ds: Any, kw: str) -> int | None:
    v = ds.get(kw)
    try:
        return int(v) if v not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _floats(ds: Any, kw: str, n: int) -> list[float] | None:
    v = ds.get(kw)
    try:
        vals = [float(x) for x in v] if v is not None else None
    except (TypeError, ValueError):
        return None
    return vals if vals is not None and len(vals) == n else None


def _frame_geometry(ds: Any) -> bool:
    """Whether an enhanced multi-frame object has per-frame plane positions."""
    from medxai.io.dicom import has_frame_item

    return has_frame_item(ds, "PlanePositionSequence")


def _header_fields(ds: Any) -> dict[str, Any]:
    meta = getattr(ds, "file_meta", None)
    photometric = _str(ds, "PhotometricInterpretation").upper()
    spp = _int(ds, "SamplesPerPixel") or 1
    return {
        "sop_class_uid": _str(ds, "SOPClassUID"),
        "media_sop_class_uid": _str(meta, "MediaStorageSOPClassUID") if meta is not None else "",
        "sop_instance_uid": _str(ds, "SOPInstanceUID"),
        "study_instance_uid": _str(ds, "StudyInstanceUID"),
        "series_instance_uid": _str(ds, "SeriesInstanceUID"),
        "modality": _str(ds, "Modality").upper(),
        "series_number": _int(ds, "SeriesNumber"),
        "instance_number": _int(ds, "InstanceNumber"),
        "series_description": _str(ds, "SeriesDescription")[:200],
        "study_date": _str(ds, "StudyDate"),
        "rows": _int(ds, "Rows"),
        "columns": _int(ds, "Columns"),
        "samples_per_pixel": spp,
        "photometric": photometric,
        "channels": 3 if spp == 3 or photometric == "PALETTE COLOR" else 1,
        "frames": _int(ds, "NumberOfFrames") or 1,
        "bits_allocated": _int(ds, "BitsAllocated"),
        "transfer_syntax": _str(meta, "TransferSyntaxUID") if meta is not None else "",
        "orientation": _floats(ds, "ImageOrientationPatient", 6),
        "position": _floats(ds, "ImagePositionPatient", 3),
        "has_spacing": any(
            ds.get(k) is not None
            for k in ("PixelSpacing", "ImagerPixelSpacing", "NominalScannedPixelSpacing")
        ),
        "frame_geometry": _frame_geometry(ds),
        "echo_numbers": _str(ds, "EchoNumbers"),
        "acquisition_number": _str(ds, "AcquisitionNumber"),
        "temporal_position": _str(ds, "TemporalPositionIdentifier"),
        "trigger_time": _str(ds, "TriggerTime"),
        "image_type": "\\".join(str(v) for v in (ds.get("ImageType") or [])),
        "volume_attributes": _volume_attributes(ds),
    }


def _volume_attributes(ds: Any) -> dict[str, str]:
    from medxai.io.dicom.volumes import volume_attributes

    return volume_attributes(ds)


def _pixel_check(fh: Any, ds: Any, size: int) -> tuple[bool, str | None]:
    """After a ``stop_before_pixels`` read, look at the Pixel Data element's header.

    Returns ``(has_pixels, problem)``: ``problem`` says the native pixel data is cut short.
    Encapsulated (compressed) pixel data has no length up front and is checked when decoded.
    """
    pos = fh.tell()
    head = fh.read(12)
    if len(head) < 8:
        return False, None
    implicit, little = ds.original_encoding
    if implicit is None:
        return True, None
    e = "<" if little else ">"
    tag = struct.unpack(e + "HH", head[:4])
    if tag not in _PIXEL_TAGS:
        return True, None
    vr = head[4:6]
    # some files say explicit VR and write the pixel element implicitly (and vice versa)
    if not (vr.isalpha() and vr.isupper()):
        length, hdr = struct.unpack(e + "I", head[4:8])[0], 8
    elif vr in _LONG_VRS:
        if len(head) < 12:
            return True, "the Pixel Data element is cut off"
        length, hdr = struct.unpack(e + "I", head[8:12])[0], 12
    else:
        length, hdr = struct.unpack(e + "H", head[6:8])[0], 8
    if length == 0xFFFFFFFF:
        return True, None
    end = pos + hdr + length
    if end > size:
        return True, (
            f"truncated: its pixel data needs {length} bytes from offset {pos + hdr}, "
            f"but the file ends {end - size} bytes short ({size} bytes)"
        )
    return True, None


def scan_file(root: str | Path, rel: str) -> FileInfo:
    """Classify one file from its header (pixels are not read). Never raises for bad input."""
    import pydicom

    t0 = time.perf_counter()
    full = os.path.join(root, rel)
    name = os.path.basename(rel)
    try:
        st = os.stat(full)
    except OSError as exc:
        return FileInfo(rel, 0, 0, "corrupt", f"cannot be read ({exc.strerror})", failed=True)

    def done(
        kind: str,
        reason: str | None = None,
        failed: bool = False,
        header: dict[str, Any] | None = None,
    ) -> FileInfo:
        return FileInfo(
            rel, st.st_size, st.st_mtime_ns, kind, reason, failed, header, time.perf_counter() - t0
        )

    if name.startswith("."):
        return done("hidden", "hidden file (name starts with '.')")
    if st.st_size == 0:
        return done("empty", "empty file (0 bytes)")
    try:
        with open(full, "rb") as fh:
            head = fh.read(132)
    except OSError as exc:
        return done("corrupt", f"cannot be read ({exc.strerror})", failed=True)
    is_dicm = len(head) >= 132 and head[128:132] == b"DICM"
    if not is_dicm:
        for magic, what in _PICTURE_MAGIC:
            if head.startswith(magic):
                return done("not-dicom", f"not DICOM ({what})")
        from medxai.io.dicom import is_dicom_file

        if not is_dicom_file(full):
            return done("not-dicom", f"not DICOM (starts with {head[:8]!r})")
    try:
        with open(full, "rb") as fh:
            ds = pydicom.dcmread(fh, stop_before_pixels=True, force=True)
            header = _header_fields(ds)
            if header["transfer_syntax"] in _DEFLATED_TS:
                has_pixels, problem = True, None
            else:
                has_pixels, problem = _pixel_check(fh, ds, st.st_size)
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types for damaged files
        return done(
            "corrupt", f"DICOM header cannot be parsed ({type(exc).__name__}: {exc})", failed=True
        )
    sop = header["sop_class_uid"]
    media_sop = header.pop("media_sop_class_uid")
    if _DICOMDIR_SOP in (sop, media_sop) or name.upper() == "DICOMDIR":
        return done("dicomdir", _dicomdir_reason(ds, Path(full).parent), header=header)
    from medxai.io.dicom import NON_IMAGE_SOP_CLASSES

    if sop in NON_IMAGE_SOP_CLASSES:
        return done("non-image", f"not an image ({NON_IMAGE_SOP_CLASSES[sop]})", header=header)
    if not header["rows"] or not header["columns"]:
        what = header["modality"] or "unknown modality"
        return done("non-image", f"not an image (DICOM {what} without Rows/Columns)", header=header)
    if not has_pixels:
        return done("non-image", "not an image (no Pixel Data)", header=header)
    if problem:
        return done("corrupt", problem, failed=True, header=header)
    return done("image", None, header=header)


def _dicomdir_reason(ds: Any, folder: Path) -> str:
    """What a DICOMDIR lists, and which of the files it lists are missing."""
    from medxai.io.dicom import find_case_insensitive

    listed, missing = 0, []
    for rec in ds.get("DirectoryRecordSequence") or []:
        ref = rec.get("ReferencedFileID")
        if not ref:
            continue
        parts = [ref] if isinstance(ref, str) else [str(v) for v in ref]
        listed += 1
        if not folder.joinpath(*parts).is_file() and find_case_insensitive(folder, parts) is None:
            missing.append("/".join(parts))
    reason = f"DICOMDIR listing {listed} file(s) (each is scanned as a file of the export)"
    if missing:
        reason += f"; {len(missing)} listed file(s) are missing, e.g. {missing[0]}"
    return reason


def _scan_chunk(root: str, rels: Sequence[str]) -> list[FileInfo]:
    return [scan_file(root, r) for r in rels]


def _quiet_scan_worker() -> None:
    """Scan worker processes are ours alone: pydicom's warnings about odd files would only
    clutter the console, and each file's problem is in its :class:`FileInfo`."""
    import warnings

    warnings.simplefilter("ignore")


def scan_files(
    root: str | Path,
    rels: Sequence[str],
    *,
    workers: int | None = None,
    executor: str = "auto",
    progress: Callable[[int, int], None] | None = None,
) -> list[FileInfo]:
    """Scan ``rels`` (relative to ``root``) with ``workers`` parallel workers.

    ``executor="auto"``: up to 2000 files, threads (reading is I/O-bound on network storage,
    and starting processes costs seconds); beyond, worker processes (``spawn``) take chunks of
    files, since parsing headers is CPU-bound Python. ``"serial"``, ``"threads"`` or ``"processes"`` force one.
    ``progress(done, total)`` is called as files complete. Results come back in ``rels`` order.
    """
    if executor not in ("auto", "serial", "threads", "processes"):
        raise ValueError(f"executor must be auto, serial, threads or processes, not {executor!r}")
    root = str(root)
    n = len(rels)
    workers = max(1, workers if workers is not None else min(8, os.cpu_count() or 1))
    say = progress or (lambda _d, _t: None)
    if executor == "serial" or (executor == "auto" and (workers == 1 or n < 8)):
        out = []
        for i, r in enumerate(rels):
            out.append(scan_file(root, r))
            if (i + 1) % 64 == 0 or i + 1 == n:
                say(i + 1, n)
        return out
    chunk = max(1, min(256, n // (workers * 4) or 1))
    pieces = [list(rels[i : i + chunk]) for i in range(0, n, chunk)]
    use_processes = executor == "processes" or (executor == "auto" and n >= 2000)
    pool: cf.Executor = (
        cf.ProcessPoolExecutor(
            workers, mp_context=multiprocessing.get_context("spawn"), initializer=_quiet_scan_worker
        )
        if use_processes
        else cf.ThreadPoolExecutor(workers)
    )
    results: dict[int, list[FileInfo]] = {}
    done_count = 0
    with pool:
        futs = {pool.submit(_scan_chunk, root, p): i for i, p in enumerate(pieces)}
        for fut in cf.as_completed(futs):
            results[futs[fut]] = fut.result()
            done_count += len(results[futs[fut]])
            say(done_count, n)
    return [fi for i in range(len(pieces)) for fi in results[i]]


# ---------------------------------------------------------------------------------------------
# grouping
# ---------------------------------------------------------------------------------------------

_SAFE = re.compile(r"[^A-Za-z0-9]+")


def _h(*parts: Any) -> str:
    return hashlib.sha1("\x1f".join(str(p) for p in parts).encode()).hexdigest()


def _study_folder(study_uid: str, study_date: str) -> str:
    date = study_date if re.fullmatch(r"\d{8}", study_date or "") else ""
    return f"study_{date + '_' if date else ''}{_h(study_uid)[:10]}"


def _series_folder(
    modality: str, series_number: int | None, instance: int | None, stack_id: str
) -> str:
    mod = _SAFE.sub("", modality or "")[:16] or "UNK"
    sn = f"s{series_number}" if series_number is not None and 0 <= series_number < 10**9 else "sx"
    inst = f"_i{instance}" if instance is not None and 0 <= instance < 10**9 else ""
    return f"{mod}_{sn}{inst}_{stack_id[:10]}"


def mark_duplicates(files: Sequence[FileInfo]) -> None:
    """Mark later copies of the same instance (same SOP Instance UID, size, frames) ``duplicate``.

    The first in path order is kept. Re-encodings of an instance (another transfer syntax) are
    copies of it; objects that share a UID but differ in image size or frames are kept apart.
    """
    first: dict[tuple[Any, ...], str] = {}
    for fi in files:
        if fi.kind != "image" or fi.header is None:
            continue
        h = fi.header
        if not h["sop_instance_uid"]:
            continue
        key = (h["sop_instance_uid"], h["rows"], h["columns"], h["frames"], h["channels"])
        if key in first:
            fi.kind = "duplicate"
            fi.reason = f"duplicate of {first[key]} (same SOP Instance UID)"
        else:
            first[key] = fi.path


def _split_positions(items: list[FileInfo]) -> list[tuple[str, list[FileInfo]]]:
    """Split a same-geometry group whose slices share positions (several volumes in one series)
    as the reader does (:func:`medxai.io.dicom.volumes.split_volumes`); ``(label, files)``."""
    from medxai.io.dicom.volumes import split_volumes

    headers = [fi.header or {} for fi in items]
    attrs = [
        h.get("volume_attributes") or {kw: str(h.get(f, "")) for f, kw in _OLD_SPLIT_FIELDS.items()}
        for h in headers
    ]
    vols = split_volumes([h.get("position") for h in headers], attrs)
    return [(v.label, [items[i] for i in v.members]) for v in vols]


def group_stacks(files: Sequence[FileInfo]) -> list[Stack]:
    """Group the ``image`` files into stacks (see the module docstring), in a stable order."""
    by_series: dict[tuple[str, str], list[FileInfo]] = defaultdict(list)
    for fi in files:
        if fi.kind == "image" and fi.header is not None:
            # an export de-identified down to empty UIDs: the files of one folder stand for the
            # series (then split by geometry and positions below, as the reader splits a folder)
            series = fi.header["series_instance_uid"] or f"no-series-uid:{Path(fi.path).parent}"
            by_series[(fi.header["study_instance_uid"], series)].append(fi)
    stacks: list[Stack] = []
    for (study, series), items in by_series.items():
        volume_groups: dict[tuple[Any, ...], list[FileInfo]] = defaultdict(list)
        for fi in items:
            h = fi.header
            assert h is not None
            geometric = (
                h["orientation"] is not None and h["position"] is not None and h["has_spacing"]
            )
            if h["frames"] > 1 or not geometric:
                form = "multiframe" if h["frames"] > 1 else "image"
                sid = _h(
                    study,
                    series,
                    "file",
                    h["sop_instance_uid"] or fi.path,
                    h["rows"],
                    h["columns"],
                    h["frames"],
                    h["channels"],
                )[:16]
                stacks.append(
                    _make_stack(
                        sid, study, series, [fi], form, h["frames"], instance=h["instance_number"]
                    )
                )
                continue
            key = (
                h["rows"],
                h["columns"],
                tuple(round(v, 4) for v in h["orientation"]),
                h["channels"],
            )
            volume_groups[key].append(fi)
        for key, group in volume_groups.items():
            for sub, part in _split_positions(group):
                sid = _h(study, series, "stack", key, sub)[:16]
                if len(part) == 1:
                    h = part[0].header
                    assert h is not None
                    stacks.append(
                        _make_stack(
                            sid, study, series, part, "image", 1, instance=h["instance_number"]
                        )
                    )
                else:
                    stacks.append(_make_stack(sid, study, series, part, "volume", len(part)))
    stacks.sort(key=lambda s: (s.output_name, s.id))
    return stacks


def _make_stack(
    sid: str,
    study: str,
    series: str,
    items: list[FileInfo],
    form: str,
    n_slices: int,
    instance: int | None = None,
) -> Stack:
    h = items[0].header
    assert h is not None
    files = sorted(fi.path for fi in items)
    fingerprint = _h(
        *[f"{fi.path}:{fi.size}:{fi.mtime_ns}" for fi in sorted(items, key=lambda f: f.path)]
    )[:16]
    name = (
        _study_folder(study, h["study_date"])
        + "/"
        + _series_folder(h["modality"], h["series_number"], instance, sid)
    )
    return Stack(
        id=sid,
        study_uid=study,
        series_uid=series,
        modality=h["modality"],
        series_number=h["series_number"],
        description=h["series_description"],
        study_date=h["study_date"],
        files=files,
        form=form,
        dims=3 if n_slices > 1 else 2,
        n_slices=n_slices,
        rows=int(h["rows"] or 0),
        columns=int(h["columns"] or 0),
        channels=int(h["channels"]),
        output_name=name,
        fingerprint=fingerprint,
    )


def fit_reason(stack: Stack, req: ModelRequirements) -> str | None:
    """Why ``stack`` does not fit the model (modality, 2D/3D, colour), or ``None`` when it fits."""
    problems = []
    if req.modalities and stack.modality not in req.modalities:
        problems.append(
            f"modality {stack.modality or 'unknown'} (the model is for {', '.join(req.modalities)})"
        )
    if req.spatial_dims == 2 and stack.dims != 2:
        problems.append(f"a {stack.describe().split(' ', 1)[1]} (the model segments 2D images)")
    elif req.spatial_dims == 3 and stack.dims != 3:
        problems.append("a single 2D image (the model segments volumes)")
    if stack.channels != req.channels:
        word = {1: "greyscale", 3: "colour"}
        problems.append(
            f"{word.get(stack.channels, f'{stack.channels}-channel')} pixels (the "
            f"model takes {word.get(req.channels, f'{req.channels}-channel')})"
        )
    return "does not fit the model: " + "; ".join(problems) if problems else None


def scan_export(
    root: str | Path,
    *,
    workers: int | None = None,
    exclude: Iterable[str | Path] = (),
    known: Mapping[str, FileInfo] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> ScanOutcome:
    """List, header-scan and group every file under ``root``.

    Args:
        workers: parallel scan workers (default: CPU count, at most 8).
        exclude: folders to leave out (the output folder when it lies inside ``root``).
        known: results of an earlier scan by relative path; a file whose size and modification
            time are unchanged is not read again.
        progress: ``progress(done, total)`` during the scan.
    """
    t0 = time.perf_counter()
    root = Path(root)
    rels = list_files(root, exclude)
    known = known or {}
    cached: dict[str, FileInfo] = {}
    todo: list[str] = []
    for rel in rels:
        old = known.get(rel)
        if old is not None:
            try:
                st = os.stat(root / rel)
            except OSError:
                st = None
            if st is not None and st.st_size == old.size and st.st_mtime_ns == old.mtime_ns:
                cached[rel] = FileInfo(
                    old.path,
                    old.size,
                    old.mtime_ns,
                    "image" if old.kind == "duplicate" else old.kind,
                    None if old.kind == "duplicate" else old.reason,
                    old.failed,
                    old.header,
                    old.seconds,
                )
                continue
        todo.append(rel)
    fresh = {fi.path: fi for fi in scan_files(root, todo, workers=workers, progress=progress)}
    files = [cached[r] if r in cached else fresh[r] for r in rels]
    mark_duplicates(files)
    stacks = group_stacks(files)
    return ScanOutcome(
        root=root,
        files=files,
        stacks=stacks,
        seconds=time.perf_counter() - t0,
        headers_read=len(todo),
    )
