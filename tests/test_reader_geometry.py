"""The reader's geometry against independent references: dcm2niix (read with nibabel) and
SimpleITK. Origin within 1e-3 mm, direction cosines within 1e-4, voxel values equal."""

from __future__ import annotations

import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom.data
import pytest
import SimpleITK as sitk

from medxai.io.geometry import lps_to_ras_affine
from medxai.io.readers import load_image
from tests.conftest import SHARED, require_tool

DICOM = SHARED / "dicom"

# (id, path) of every DICOM image series or file with patient geometry among the real data
DICOM_CASES = [
    ("totalseg-ct-series-j2k", DICOM / "totalsegmentator_tests/tests/reference_files/example_ct_dicom"),
    ("dcmqi-ct-3slice", DICOM / "dcmqi_data/data/segmentations/ct-3slice"),
    ("dcmqi-23x38x3-series", DICOM / "dcmqi_data/data/segmentations/23x38x3/image"),
    ("dcmqi-24x38x3-series", DICOM / "dcmqi_data/data/segmentations/24x38x3/image"),
    ("dcmqi-23x38x3-enhanced-multiframe", DICOM / "dcmqi_data/data/segmentations/23x38x3/multiframe/mf.dcm"),
    ("rtutils-oblique-series", DICOM / "rt-utils_testdata/tests/oriented_data"),
    ("rtutils-ct-2slice", DICOM / "rt-utils_testdata/tests/mock_data"),
    ("notzaki-ct", DICOM / "notZaki_DICOMSamples/CT_Explicit_Little.dcm"),
    ("notzaki-ct-jpeg-lossless", DICOM / "notZaki_DICOMSamples/CT_JPEG70.dcm"),
    ("notzaki-mr", DICOM / "notZaki_DICOMSamples/MR_Implicit_Little.dcm"),
    ("highdicom-ct", DICOM / "highdicom_test_files/ct_image.dcm"),
    ("paramap-mr-slice", DICOM / "dcmqi_data/data/paramaps/pm-example-slice.dcm"),
]
# Siemens mosaics (one MR volume tiled in a frame, 9 transfer syntaxes): ITK cannot unpack them,
# so only dcm2niix is a reference
MOSAIC_CASES = [(f"dcm_qa_ts-mosaic-{i}", DICOM / f"dcm_qa_ts/In/{i}.dcm") for i in range(1, 10)]

PYDICOM_CASES = ["CT_small.dcm", "MR_small.dcm", "MR_small_RLE.dcm", "MR_small_jp2klossless.dcm",
                 "MR_small_bigendian.dcm"]

VOLUME_CASES = [
    ("totalseg-ct-nifti", DICOM / "totalsegmentator_tests/tests/reference_files/example_ct_sm.nii.gz"),
    ("totalseg-mr-nifti", DICOM / "totalsegmentator_tests/tests/reference_files/example_mr_sm.nii.gz"),
    ("totalseg-seg-dicom-nifti", DICOM / "totalsegmentator_tests/tests/reference_files/example_seg_dicom.nii.gz"),
    ("monai-anatomical", DICOM / "monai_testing_data/anatomical.nii"),
    ("monai-reoriented", DICOM / "monai_testing_data/reoriented_anat_moved.nii"),
    ("dcmqi-heart-nrrd", DICOM / "dcmqi_data/data/segmentations/heart_seg.nrrd"),
    ("dcmqi-paramap-nrrd", DICOM / "dcmqi_data/data/paramaps/pm-example-float.nrrd"),
    ("pyradiomics-brain1", SHARED / "volumes/pyradiomics_data/brain1_image.nrrd"),
    ("pyradiomics-breast1", SHARED / "volumes/pyradiomics_data/breast1_image.nrrd"),
    ("pyradiomics-prostate", SHARED / "volumes/pyradiomics_data/prostate_phantom_subvolume.nrrd"),
]


def _canonical(arr: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    img = nib.as_closest_canonical(nib.Nifti1Image(np.asarray(arr), np.asarray(affine)))
    return np.asanyarray(img.dataobj), img.affine


def _ours(path: Path, canonical: bool = True) -> tuple[np.ndarray, np.ndarray]:
    img = load_image(path).image
    arr = img.numpy()[0].astype(np.float64)
    if arr.ndim == 2:
        arr = arr[..., None]
    return _canonical(arr, img.affine.numpy()) if canonical else (arr, img.affine.numpy())


def _assert_same_grid(ours: tuple[np.ndarray, np.ndarray], ref: tuple[np.ndarray, np.ndarray],
                      what: str) -> None:
    (a, aff_a), (b, aff_b) = ours, ref
    assert a.shape == b.shape, f"{what}: shape {a.shape} vs {b.shape}"
    np.testing.assert_allclose(aff_a[:3, 3], aff_b[:3, 3], atol=1e-3, err_msg=f"{what}: origin")
    for d in range(3):
        ca = aff_a[:3, d] / np.linalg.norm(aff_a[:3, d])
        cb = aff_b[:3, d] / np.linalg.norm(aff_b[:3, d])
        np.testing.assert_allclose(ca, cb, atol=1e-4, err_msg=f"{what}: direction of axis {d}")
        if b.shape[d] > 1:
            np.testing.assert_allclose(np.linalg.norm(aff_a[:3, d]), np.linalg.norm(aff_b[:3, d]),
                                       rtol=1e-4, err_msg=f"{what}: spacing of axis {d}")
    if np.all(np.mod(b, 1) == 0):
        np.testing.assert_array_equal(a, b, err_msg=f"{what}: voxel values")
    else:  # rescaled to float: equal up to float32 rounding (the references differ there too)
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6, err_msg=f"{what}: voxel values")


def _sitk_reference(path: Path) -> tuple[np.ndarray, np.ndarray]:
    if path.is_dir():
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(path)))
        img = reader.Execute()
    else:
        img = sitk.ReadImage(str(path))
    arr = sitk.GetArrayFromImage(img)
    dim = img.GetDimension()
    if dim == 2:
        arr = arr[None]
    arr = np.transpose(arr, (2, 1, 0)) if arr.ndim == 3 else np.transpose(arr[..., 0], (2, 1, 0))
    direction = np.eye(3)
    direction[:dim, :dim] = np.asarray(img.GetDirection()).reshape(dim, dim)
    spacing = list(img.GetSpacing()) + [1.0] * (3 - dim)
    origin = list(img.GetOrigin()) + [0.0] * (3 - dim)
    lps = np.eye(4)
    lps[:3, :3] = direction * np.asarray(spacing)[None, :]
    lps[:3, 3] = origin
    # same index order as medxai (i along columns, k ascending along the normal): compare raw,
    # so that ITK's orthonormalised directions do not move a canonicalised far corner
    return arr.astype(np.float64), lps_to_ras_affine(lps)


def _dcm2niix_reference(path: Path, tmp: Path) -> tuple[np.ndarray, np.ndarray]:
    exe = require_tool("dcm2niix")
    src = path
    if path.is_file():  # dcm2niix converts folders: give it a folder with only this file
        src = tmp / "in"
        src.mkdir()
        (src / path.name).symlink_to(path)
    out = tmp / "out"
    out.mkdir()
    proc = subprocess.run([exe, "-z", "n", "-b", "n", "-s", "y" if path.is_file() else "n",
                           "-o", str(out), "-f", "ref", str(src)],
                          capture_output=True, text=True, timeout=120)
    niis = sorted(out.glob("*.nii"))
    if not niis and "Unsupported transfer syntax" in proc.stdout:
        pytest.skip("this dcm2niix build lacks the codec (test_dcm_qa_ts_reference_niftis "
                    "compares against dcm2niix's shipped output instead)")
    assert len(niis) == 1, f"dcm2niix made {len(niis)} files: {proc.stdout}\n{proc.stderr}"
    img = nib.load(str(niis[0]))
    data = np.asarray(img.get_fdata(dtype=np.float64))
    if data.ndim == 2:
        data = data[..., None]
    return _canonical(data, img.affine)


def _cases() -> list:
    params = [pytest.param(p, id=i) for i, p in DICOM_CASES]
    params += [pytest.param(Path(pydicom.data.get_testdata_file(n)), id=f"pydicom-{n}")
               for n in PYDICOM_CASES]
    return params


@pytest.mark.parametrize("path", _cases())
def test_dicom_geometry_matches_simpleitk(path: Path) -> None:
    if not path.exists():
        pytest.skip(f"real test data not available: {path}")
    _assert_same_grid(_ours(path, canonical=False), _sitk_reference(path),
                      f"{path.name} vs SimpleITK")


@pytest.mark.parametrize("path", _cases() + [pytest.param(p, id=i) for i, p in MOSAIC_CASES])
def test_dicom_geometry_matches_dcm2niix(path: Path, tmp_path: Path) -> None:
    if not path.exists():
        pytest.skip(f"real test data not available: {path}")
    _assert_same_grid(_ours(path), _dcm2niix_reference(path, tmp_path), f"{path.name} vs dcm2niix")


@pytest.mark.parametrize("path", [pytest.param(p, id=i) for i, p in VOLUME_CASES])
def test_volume_geometry_matches_simpleitk(path: Path) -> None:
    if not path.exists():
        pytest.skip(f"real test data not available: {path}")
    _assert_same_grid(_ours(path, canonical=False), _sitk_reference(path),
                      f"{path.name} vs SimpleITK")


def test_dcm_qa_ts_reference_niftis(tmp_path: Path) -> None:
    """dcm_qa_ts ships dcm2niix's own output for each transfer syntax: match every one."""
    ref_dir = DICOM / "dcm_qa_ts" / "Ref"
    if not ref_dir.is_dir():
        pytest.skip("real test data not available: dcm_qa_ts")
    for i in range(1, 10):
        img = nib.load(str(ref_dir / f"{i}.nii"))
        data = np.asarray(img.get_fdata(dtype=np.float64))
        if data.ndim == 2:
            data = data[..., None]
        _assert_same_grid(_ours(DICOM / "dcm_qa_ts" / "In" / f"{i}.dcm"),
                          _canonical(data, img.affine), f"dcm_qa_ts {i}")


def test_totalsegmentator_series_and_labels_line_up() -> None:
    """The CT series and its segmentation NIfTI (both read by medxai) share a grid, and labels
    fall inside the body (HU above air)."""
    base = DICOM / "totalsegmentator_tests/tests/reference_files"
    if not base.is_dir():
        pytest.skip("real test data not available: totalsegmentator_tests")
    ct = load_image(base / "example_ct_dicom").image
    seg = load_image(base / "example_seg_dicom.nii.gz").image
    ct_arr, ct_aff = _canonical(ct.numpy()[0], ct.affine.numpy())
    seg_arr, seg_aff = _canonical(seg.numpy()[0], seg.affine.numpy())
    assert ct_arr.shape == seg_arr.shape
    np.testing.assert_allclose(ct_aff, seg_aff, atol=1e-3)
    labelled = seg_arr > 0
    assert labelled.sum() > 1000
    hu = ct_arr[labelled]
    assert np.median(hu) > -500, f"labels do not lie on tissue (median HU {np.median(hu)})"
    # and body voxels outside the labels are not all air either: the overlay is not shifted
    assert (hu > -500).mean() > 0.9
