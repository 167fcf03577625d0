"""The project's own samples: generated deterministically, and read back on the right grid."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medxai.io.readers import load_image
from medxai.samples import ct_affine_ras, make_ct_volume, make_dermoscopy_photo, write_samples

SAMPLES = Path(__file__).resolve().parents[1] / "sample_data"


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_samples(tmp_path_factory.mktemp("samples"))


def test_oblique_series_matches_nifti_and_truth(fresh: dict[str, Path]) -> None:
    series = load_image(fresh["ct_series"]).image
    nifti = load_image(fresh["ct_nifti"]).image
    vol, _ = make_ct_volume()
    np.testing.assert_array_equal(series.numpy()[0], vol)  # sorted by position, not by name
    np.testing.assert_array_equal(nifti.numpy()[0], vol)
    np.testing.assert_allclose(series.affine.numpy(), ct_affine_ras(vol.shape), atol=1e-5)
    np.testing.assert_allclose(nifti.affine.numpy(), series.affine.numpy(), atol=1e-5)


def test_dermoscopy_dicom_and_jpeg_agree(fresh: dict[str, Path]) -> None:
    dcm = load_image(fresh["dermoscopy_dicom"])
    rgb, _ = make_dermoscopy_photo()
    arr = dcm.image.numpy()
    assert arr.shape == (3, rgb.shape[1], rgb.shape[0])  # (C, W, H)
    np.testing.assert_array_equal(arr.transpose(2, 1, 0), rgb)
    assert dcm.dicom is not None and dcm.dicom.first.PatientName == "MEDXAI^SYNTHETIC^SAMPLE"
    jpg = load_image(fresh["dermoscopy_jpeg"]).image.numpy().astype(int)
    assert np.abs(jpg - arr).mean() < 3  # JPEG is lossy but close
    np.testing.assert_array_equal(dcm.image.affine.numpy(), load_image(fresh["dermoscopy_jpeg"]).image.affine.numpy())


def test_committed_samples_are_current(fresh: dict[str, Path]) -> None:
    """sample_data/ holds exactly what the generator makes (regenerate it when this fails)."""
    for key in ("dermoscopy_dicom", "ct_nifti", "dermoscopy_mask"):
        committed = SAMPLES / fresh[key].name
        a = load_image(committed).image.numpy()
        b = load_image(fresh[key]).image.numpy()
        np.testing.assert_array_equal(a, b)
