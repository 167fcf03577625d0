"""What a path is, from its content, without torch, MONAI or numpy.

The command line calls these functions before it imports anything heavy, so that a missing,
unreadable or foreign input is answered in a fraction of the time ``import torch`` takes.
:func:`sniff_form` gives the same answers as :func:`medxai.io.readers.detect_form` for every file
medxai reads; pydicom is imported only for the rare DICOM file without the 128-byte preamble.

Forms (:data:`FORMS`): ``picture`` (JPEG/PNG/TIFF/BMP), ``dicom`` (a DICOM file), ``dicomdir``
(a DICOMDIR file, or a folder holding one), ``dicom-folder`` (a folder of DICOM files),
``picture-folder`` (a folder that holds no DICOM file but pictures or volumes: each is its own
input), ``nifti`` (.nii, .nii.gz), ``itk`` (NRRD, MHA/MHD).
"""

from __future__ import annotations

import gzip
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

from medxai.errors import CorruptInputError, InputError, UnsupportedInputError

__all__ = [
    "FORMS",
    "PICTURE_MAGIC",
    "sniff_form",
    "sniff_file",
    "FolderContents",
    "sniff_folder",
    "foreign_file_error",
]

#: Forms :func:`sniff_form` can report.
FORMS = ("picture", "dicom", "dicomdir", "dicom-folder", "picture-folder", "nifti", "itk")

#: Leading bytes of the picture formats medxai reads, with their names.
PICTURE_MAGIC = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"BM", "BMP"),
)

_SUPPORTED_HINT = "medxai reads JPEG/PNG/TIFF/BMP, DICOM, NIfTI (.nii/.nii.gz), NRRD, MHA/MHD"
# groups a DICOM data set without preamble can start with (little endian)
_RAW_DICOM_GROUPS = {0x0002, 0x0008, 0x0010, 0x0018, 0x0020, 0x0028}


def _nifti_header_size(head: bytes) -> int | None:
    if len(head) < 4:
        return None
    for fmt in ("<i", ">i"):
        if struct.unpack(fmt, head[:4])[0] in (348, 540):
            return struct.unpack(fmt, head[:4])[0]
    return None


def _raw_dicom(path: Path, head: bytes) -> bool:
    """A DICOM data set without preamble: a plausible first tag group in the first bytes (some
    old files have a stray byte in front), confirmed by pydicom."""
    if len(head) < 8 or not any(
        struct.unpack("<H", head[i : i + 2])[0] in _RAW_DICOM_GROUPS for i in range(4)
    ):
        return False
    import pydicom  # only here: no preamble is rare

    try:
        ds = pydicom.dcmread(str(path), force=True, stop_before_pixels=True, defer_size=1024)
        groups = {tag.group for tag in ds.keys()}
    except Exception:  # noqa: BLE001 - any parse failure just means "not DICOM"
        return False
    return len(groups & {0x0008, 0x0010, 0x0018, 0x0020, 0x0028}) >= 2


def sniff_file(path: Path) -> str | None:
    """The form of the file ``path`` from its first bytes, or None for a foreign file.

    Raises:
        InputError: the file cannot be opened.
        CorruptInputError: the file is empty, or gzip data that cannot be decompressed.
    """
    try:
        with open(path, "rb") as fh:
            head = fh.read(1024)
    except OSError as exc:
        raise InputError(
            f"cannot be opened ({exc.strerror})", path=path, hint="check the file's permissions"
        ) from exc
    if not head:
        raise CorruptInputError(
            "is empty (0 bytes)",
            path=path,
            hint="the file was not copied completely; copy it again",
        )
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "dicomdir" if path.name.upper() == "DICOMDIR" else "dicom"
    if any(head.startswith(magic) for magic, _ in PICTURE_MAGIC):
        return "picture"
    if head[:2] == b"\x1f\x8b":
        try:
            with gzip.open(path, "rb") as gz:
                inner = gz.read(348)
        except (OSError, EOFError) as exc:
            raise CorruptInputError(f"gzip data cannot be decompressed ({exc})", path=path) from exc
        return "nifti" if _nifti_header_size(inner) else None
    if _nifti_header_size(head) and head[344:347] in (b"n+1", b"ni1") or head[4:8] == b"n+2\x00":
        return "nifti"
    if head.startswith(b"NRRD") or head.lstrip().startswith((b"ObjectType", b"NDims")):
        return "itk"
    if _raw_dicom(path, head):
        return "dicom"
    return None


@dataclass
class FolderContents:
    """What :func:`sniff_folder` found: the folder's form and, for a picture folder, its inputs.

    ``files`` (sorted by path) are the pictures and volumes of a ``picture-folder``; empty for
    the other forms. ``foreign`` counts the files of no form medxai reads.
    """

    form: str
    files: list[Path] = field(default_factory=list)
    foreign: int = 0


def sniff_folder(folder: Path) -> FolderContents:
    """Classify a folder: ``dicomdir`` (holds a DICOMDIR), ``dicom-folder`` (at least one DICOM
    file anywhere below it), ``picture-folder`` (no DICOM file, but pictures or volumes directly
    in it), or ``empty`` (none of these).

    Reads at most 1 KiB per file and stops at the first DICOM file. Hidden files are passed over.
    """
    if any((folder / n).is_file() for n in ("DICOMDIR", "dicomdir")):
        return FolderContents("dicomdir")
    found: list[Path] = []
    foreign = 0
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        top = Path(root) == folder
        for name in sorted(names):
            if name.startswith("."):
                continue
            p = Path(root) / name
            try:
                form = sniff_file(p)
            except InputError:
                form = None
            if form in ("dicom", "dicomdir"):
                return FolderContents("dicom-folder")
            if form is not None and top:
                found.append(p)
            elif form is None:
                foreign += 1
    return FolderContents("picture-folder" if found else "empty", found, foreign)


def sniff_form(path: str | Path) -> str:
    """Say what ``path`` is from its content: one of :data:`FORMS`.

    Raises:
        InputError: the path does not exist or cannot be opened, or a folder holds nothing
            medxai reads.
        CorruptInputError: the file is empty.
        UnsupportedInputError: the file is of no form medxai reads.
    """
    path = Path(path)
    if not path.exists():
        raise InputError("does not exist", path=path, hint="check the path")
    if path.is_dir():
        if not os.access(path, os.R_OK | os.X_OK):
            raise InputError(
                "is a folder that cannot be read", path=path, hint="check the folder's permissions"
            )
        contents = sniff_folder(path)
        if contents.form == "empty":
            raise InputError(
                "holds no DICOM file, picture or volume", path=path, hint=_SUPPORTED_HINT
            )
        return contents.form
    form = sniff_file(path)
    if form is None:
        raise foreign_file_error(path)
    return form


def _stray_bytes_before_dicom(head: bytes) -> int:
    """How many stray bytes (1..3) precede what reads as a DICOM data set without preamble
    (group 0x0008, element 0x0000..0x0020 with an explicit VR), else 0."""
    for off in (1, 2, 3):
        chunk = head[off : off + 6]
        if len(chunk) == 6 and chunk[:2] == b"\x08\x00" and chunk[3] == 0:
            if chunk[2] <= 0x20 and chunk[4:6].isalpha() and chunk[4:6].isupper():
                return off
    return 0


def foreign_file_error(path: str | Path) -> UnsupportedInputError:
    """The refusal of a file of no form medxai reads, naming what it is where that can be told
    from its first bytes: a ZIP archive, gzip data that holds DICOM (or something else), a DICOM
    data set behind stray bytes, a PDF, a text file."""
    path = Path(path)
    with open(path, "rb") as fh:
        head = fh.read(512)
    if head.startswith(b"PK\x03\x04"):
        return UnsupportedInputError(
            "is a ZIP archive", path=path, hint="unpack it and give medxai the files inside"
        )
    if head.startswith(b"%PDF"):
        return UnsupportedInputError("is a PDF document, not an image", path=path)
    if head[:2] == b"\x1f\x8b":
        try:
            with gzip.open(path, "rb") as gz:
                inner = gz.read(132)
        except (OSError, EOFError):
            inner = b""
        if len(inner) >= 132 and inner[128:132] == b"DICM":
            return UnsupportedInputError(
                "is a gzip-compressed DICOM file",
                path=path,
                hint=f"decompress it first (gunzip -c {path.name} > {path.stem or 'image'}.dcm)",
            )
        return UnsupportedInputError(
            f"is gzip-compressed but holds no NIfTI image (it starts with {inner[:8]!r})",
            path=path,
            hint="decompress it and look at what it holds; " + _SUPPORTED_HINT,
        )
    off = _stray_bytes_before_dicom(head)
    if off:
        return UnsupportedInputError(
            f"looks like a DICOM data set without preamble behind {off} stray byte(s) "
            f"({head[:off]!r}), which pydicom cannot parse",
            path=path,
            hint=f"the file is damaged; remove the stray byte(s) (tail -c +{off + 1} "
            f"{path.name} > fixed.dcm) and give medxai the result",
        )
    text = head.lstrip()[:1] in (b"{", b"[", b"<", b"#") or (
        bool(head) and all(32 <= c < 127 or c in (9, 10, 13) for c in head[:256])
    )
    what = "a text file" if text else "a file of unknown form"
    return UnsupportedInputError(
        f"is {what}, not a picture, DICOM, NIfTI, NRRD or MHA file (starts with {head[:8]!r})",
        path=path,
        hint=_SUPPORTED_HINT,
    )
