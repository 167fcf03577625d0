"""Every real file either reads or raises a MedxaiError: never another exception type."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pydicom.data
import pytest

from medxai.errors import CorruptInputError, InputError, MedxaiError, SeriesError, UnsupportedInputError
from medxai.io.readers import load_image
from tests.conftest import SHARED


def _pydicom_files() -> list[Path]:
    """pydicom's test files, and those of the pydicom-data package when it is installed."""
    root = Path(pydicom.data.get_testdata_file("CT_small.dcm")).parent
    files = sorted(p for p in root.rglob("*") if p.is_file())
    import importlib.util

    spec = importlib.util.find_spec("data_store")  # pydicom-data
    if spec is not None and spec.origin:
        data = Path(spec.origin).parent / "data"
        files += sorted(p for p in data.rglob("*") if p.is_file())
    return files


def _shared_dicom_files() -> list[Path]:
    root = SHARED / "dicom"
    if not root.is_dir():
        return []
    return sorted(p for p in root.rglob("*") if p.is_file())


# Every refusal names its real cause: each class is (name, pattern of the message, pattern of
# the hint). A refusal that matches no class (a vague or generic message) fails the tests below.
REFUSAL_CLASSES = [
    ("derived object", r"is a DICOM (Label Map )?Segmentation Storage object \(\d+ segment|"
     r"is a DICOM RT Structure Set Storage object \(\d+ ROI|is a DICOM .*SR object \(",
     r"series this (SEG|RTSTRUCT) was drawn on.*medxai evaluate|holds measurements, not pixels"),
    ("RT dose / plan", r"is a DICOM RT (Dose|Plan) Storage object",
     r"dose grid computed by a treatment planning system|treatment beams and doses"),
    ("other non-image object", r"is a DICOM (Microscopy Bulk Simple Annotations) object",
     r"image series this object refers to"),
    ("no pixel data: header only", r"Image Storage object .* holds no pixel data: a header",
     r"pixel data was removed or never written"),
    ("no pixel data: no image", r"is (a DICOM .* object|DICOM) \(.*\) but holds no pixel data$",
     r"it holds no image"),
    ("unreadable data set", r"its data set holds no element pydicom can read",
     r"damaged or cut short"),
    ("undecodable pixels", r"cannot be decoded; decoders tried: pylibjpeg: .*gdcm: ",
     r"every installed decoder failed"),
    ("truncated pixels", r"pixel data does not match its header", r"truncated or damaged"),
    ("incomplete Image Pixel module", r"Image Pixel module is incomplete \(Missing required",
     r"not a complete image object"),
    ("several series", r"holds \d+ image series .*reads one at a time",
     r"folder of one series.*medxai batch"),
    ("folder without images", r"holds no readable DICOM image \(\d+ file\(s\) passed over: "
     r".*not an image", r"folder holding one DICOM image series"),
    ("DICOMDIR without its files", r"is a DICOMDIR (listing \d+ file\(s\), none|that lists no)",
     r"copy the whole medium"),
    ("empty file", r"is empty \(0 bytes\)", r"not copied completely"),
    ("archive", r"is a (ZIP archive|gzip-compressed DICOM file)", r"unpack it|decompress it"),
    ("stray bytes", r"DICOM data set without preamble behind \d+ stray byte",
     r"remove the stray byte"),
    ("not an image file", r"is a (text file|file of unknown form), not a picture, DICOM",
     r"medxai reads JPEG"),
]


def refusal_class(exc: MedxaiError) -> str | None:
    """The class of :data:`REFUSAL_CLASSES` whose message and hint patterns ``exc`` matches."""
    for name, detail, hint in REFUSAL_CLASSES:
        if re.search(detail, exc.detail, re.S) and re.search(hint, exc.hint or "", re.S):
            return name
    return None


def _check(path: Path) -> str:
    """``"ok"``, or the refusal class of the MedxaiError (``"unclassified: ..."`` if none)."""
    try:
        img = load_image(path).image
    except MedxaiError as exc:
        assert str(exc).startswith(str(path)), "the message names the file"
        return refusal_class(exc) or f"unclassified: {exc}"
    except Exception as exc:  # noqa: BLE001 - this is what the test is about
        pytest.fail(f"{path}: {type(exc).__name__} escaped: {exc}")
    assert img.ndim in (3, 4), img.shape
    assert img.affine.shape == (4, 4)
    return "ok"


def _classes(files: list[Path]) -> dict[str, str]:
    out = {}
    for p in files:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out[str(p)] = _check(p)
    vague = {p: c for p, c in out.items() if c.startswith("unclassified")}
    assert not vague, f"refusals that name no specific cause: {vague}"
    return out


# pydicom test files and the refusal class each of their refusals must have
PYDICOM_REFUSALS = {
    "JPEG2000-embedded-sequence-delimiter.dcm": "undecodable pixels",
    "MR_truncated.dcm": "truncated pixels",
    "nested_priv_SQ.dcm": "incomplete Image Pixel module",
    "rtplan.dcm": "RT dose / plan",
    "rtdose.dcm": "RT dose / plan",
    "liver_1frame.dcm": "derived object",
    "test-SR.dcm": "derived object",
    "waveform_ecg.dcm": "no pixel data: no image",
    "priv_SQ.dcm": "no pixel data: header only",
    "emri_small_jpeg_2k_lossless_too_short.dcm": "unreadable data set",
    "DICOMDIR-empty.dcm": "DICOMDIR without its files",
    "dicomdirtests/DICOMDIR": "several series",
    "TINY_ALPHA/DICOMDIR": "folder without images",  # its files are headers only
    "zipMR.gz": "archive",
    "no_meta.dcm": "stray bytes",
    "README.txt": "not an image file",
}


def test_every_pydicom_test_file_reads_or_gets_a_specific_refusal() -> None:
    files = _pydicom_files()
    assert len(files) > 80
    results = _classes(files)
    assert list(results.values()).count("ok") > 40  # the image files among them really read
    def found(name: str) -> str | None:
        return next((c for p, c in results.items() if p.endswith("/" + name)), None)

    wrong = {n: (found(n), c) for n, c in PYDICOM_REFUSALS.items() if found(n) != c}
    assert not wrong, wrong


def test_every_shared_dicom_file_reads_or_gets_a_specific_refusal() -> None:
    files = _shared_dicom_files()
    if not files:
        pytest.skip("real test data not available: ../shared/data/dicom")
    results = _classes(files)
    assert list(results.values()).count("ok") > 40


def test_every_shared_folder_reads_or_raises_medxai_error() -> None:
    root = SHARED / "dicom"
    if not root.is_dir():
        pytest.skip("real test data not available: ../shared/data/dicom")
    folders = sorted({p.parent for p in root.rglob("*") if p.is_file()})
    for folder in folders:
        try:
            load_image(folder)
        except MedxaiError:
            pass


@pytest.mark.parametrize("name,error", [
    ("MR_truncated.dcm", CorruptInputError),
    ("rtplan.dcm", UnsupportedInputError),
    ("liver_1frame.dcm", UnsupportedInputError),
    ("README.txt", UnsupportedInputError),
])
def test_known_bad_pydicom_files_get_the_right_error(name: str, error: type) -> None:
    with pytest.raises(error):
        load_image(pydicom.data.get_testdata_file(name))


def test_empty_and_missing_files(tmp_path: Path) -> None:
    empty = tmp_path / "empty.dcm"
    empty.write_bytes(b"")
    with pytest.raises(CorruptInputError, match="empty"):
        load_image(empty)
    with pytest.raises(InputError, match="does not exist"):
        load_image(tmp_path / "nope.nii.gz")


def test_truncated_nifti_and_picture(tmp_path: Path) -> None:
    import nibabel as nib
    import numpy as np
    from PIL import Image

    nii = tmp_path / "vol.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.int16), np.eye(4)), str(nii))
    cut = tmp_path / "cut.nii.gz"
    cut.write_bytes(nii.read_bytes()[:40])
    with pytest.raises(MedxaiError):
        load_image(cut)
    jpg = tmp_path / "a.jpg"
    Image.fromarray(np.zeros((32, 48, 3), np.uint8)).save(jpg)
    cutjpg = tmp_path / "cut.jpg"
    cutjpg.write_bytes(jpg.read_bytes()[:100])
    with pytest.raises(MedxaiError):
        load_image(cutjpg)


def test_folder_with_several_series_lists_them(tmp_path: Path) -> None:
    import shutil

    for name in ("CT_small.dcm", "MR_small.dcm"):
        shutil.copy(pydicom.data.get_testdata_file(name), tmp_path / name)
    with pytest.raises(SeriesError) as info:
        load_image(tmp_path)
    msg = str(info.value)
    assert "2 image series" in msg and "CT" in msg and "MR" in msg


def test_duplicate_positions_are_an_error(tmp_path: Path) -> None:
    import pydicom

    ds = pydicom.dcmread(pydicom.data.get_testdata_file("CT_small.dcm"))
    for i in range(2):
        ds.SOPInstanceUID = pydicom.uid.generate_uid()
        ds.save_as(tmp_path / f"{i}.dcm")
    with pytest.raises(SeriesError, match="share a position"):
        load_image(tmp_path)


def test_missing_slice_and_tilt_are_reported(tmp_path: Path) -> None:
    import numpy as np
    import pydicom

    ds = pydicom.dcmread(pydicom.data.get_testdata_file("CT_small.dcm"))
    base = np.array([float(v) for v in ds.ImagePositionPatient])
    for k in (0, 1, 2, 4, 5):  # slice 3 missing, and a 0.5 mm/slice shift in y (tilt)
        ds.SOPInstanceUID = pydicom.uid.generate_uid()
        ds.ImagePositionPatient = list(base + [0, 0.5 * k, 5.0 * k])
        ds.save_as(tmp_path / f"{k}.dcm")
    img = load_image(tmp_path).image
    warnings = " ".join(img.meta["geometry_warnings"])
    assert "missing slice" in warnings and "tilt" in warnings
    assert img.shape[-1] == 5
    # the affine keeps the first slice's position exactly (LPS -> RAS flips x and y)
    np.testing.assert_allclose(img.affine[:3, 3].numpy(), base * [-1, -1, 1], atol=1e-6)
