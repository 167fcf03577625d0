"""Every real file either reads or raises a MedxaiError: never another exception type."""

from __future__ import annotations

from pathlib import Path

import pydicom.data
import pytest

from medxai.errors import CorruptInputError, InputError, MedxaiError, SeriesError, UnsupportedInputError
from medxai.io.readers import load_image
from tests.conftest import SHARED


def _pydicom_files() -> list[Path]:
    root = Path(pydicom.data.get_testdata_file("CT_small.dcm")).parent
    return sorted(p for p in root.rglob("*") if p.is_file())


def _shared_dicom_files() -> list[Path]:
    root = SHARED / "dicom"
    if not root.is_dir():
        return []
    return sorted(p for p in root.rglob("*") if p.is_file())


def _check(path: Path) -> str:
    try:
        img = load_image(path).image
    except MedxaiError as exc:
        assert str(exc).startswith(str(path)), "the message names the file"
        return "error"
    except Exception as exc:  # noqa: BLE001 - this is what the test is about
        pytest.fail(f"{path}: {type(exc).__name__} escaped: {exc}")
    assert img.ndim in (3, 4), img.shape
    assert img.affine.shape == (4, 4)
    return "ok"


def test_every_pydicom_test_file_reads_or_raises_medxai_error() -> None:
    files = _pydicom_files()
    assert len(files) > 80
    results = [_check(p) for p in files]
    assert results.count("ok") > 40  # the image files among them really read


def test_every_shared_dicom_file_reads_or_raises_medxai_error() -> None:
    files = _shared_dicom_files()
    if not files:
        pytest.skip("real test data not available: ../shared/data/dicom")
    results = [_check(p) for p in files]
    assert results.count("ok") > 40


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
