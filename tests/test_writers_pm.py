"""DICOM Parametric Map writer: dcmqi reads every map back on the source grid with the NIfTI
map's values; dciodvfy finds no error; highdicom reads it."""

from __future__ import annotations

import subprocess
import warnings
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest

from medxai.errors import InputError
from medxai.io.writers import create_photo_study, write_nifti_map
from medxai.io.writers.dicom_pm import quantity_code, write_dicom_pm
from tests.conftest import shared_path
from tests.helpers_dicom import (
    assert_dciodvfy_clean,
    find_tool,
    load_series,
    load_single,
    shared_file,
)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

MODEL = {"model_name": "test-unet", "model_version": "1.2.3", "weights_sha256": "ab" * 32}


def _dcmqi_map(path: Path, out: Path):
    """PM -> dcmqi paramap2itkimage -> (values (I, J, K), SimpleITK image)."""
    import SimpleITK as sitk

    tool = find_tool("paramap2itkimage")
    if tool is None:
        pytest.skip("dcmqi's paramap2itkimage is not installed (pip install dcmqi)")
    out.mkdir()
    run = subprocess.run([tool, "--inputDICOM", str(path), "--outputDirectory", str(out)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    img = sitk.ReadImage(str(out / "pmap.nrrd"))
    return np.transpose(sitk.GetArrayFromImage(img), (2, 1, 0)), img


def _nifti_values(values: np.ndarray, tmp_path: Path) -> np.ndarray:
    """The map as float32 (what the PM holds), through the NIfTI writer's exact mode."""
    path = write_nifti_map(values, np.eye(4), tmp_path / "saliency.nii.gz", exact=True)
    img = nib.load(path)
    assert img.get_data_dtype() == np.float32
    return np.asarray(img.dataobj)


def _check_pm(path: Path, source, values: np.ndarray, tmp_path: Path):
    assert_dciodvfy_clean(path)
    ds = pydicom.dcmread(path)
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.30"
    assert ds.StudyInstanceUID == source.first.StudyInstanceUID
    assert ds.SeriesInstanceUID != source.first.SeriesInstanceUID
    mapping = ds.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0]
    assert mapping.MeasurementUnitsCodeSequence[0].CodeValue == "1"
    assert mapping.QuantityDefinitionSequence[0].ConceptCodeSequence[0].CodeValue == "130403"
    assert ds.BitsAllocated == 32 and "FloatPixelData" in ds
    equipment = " ".join(str(e.get("ContributionDescription", ""))
                         for e in ds.ContributingEquipmentSequence)
    assert "test-unet 1.2.3" in equipment and "ab" * 32 in equipment and "gradcam" in equipment
    referenced = {item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
                  for item in ds.PerFrameFunctionalGroupsSequence}
    assert referenced == {d.SOPInstanceUID for d in source.datasets}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        image = hd.imread(path)
    assert image.SOPInstanceUID == ds.SOPInstanceUID
    from_dcmqi, img = _dcmqi_map(path, tmp_path / "dcmqi")
    expected = _nifti_values(values, tmp_path).reshape(from_dcmqi.shape)
    np.testing.assert_array_equal(from_dcmqi, expected)  # float32 both ways: exact
    return ds, img


def test_pm_of_ct_series_lies_on_the_source_grid(tmp_path):
    folder = shared_file("dcmqi_data", "data", "segmentations", "ct-3slice")
    source, volume = load_series(sorted(folder.glob("*.dcm")))
    values = np.random.default_rng(0).random(volume.shape)
    path = write_dicom_pm(values, source, tmp_path / "pm.dcm", method="gradcam",
                          label_name="lesion", **MODEL)
    ds, img = _check_pm(path, source, values, tmp_path)
    assert ds.FrameOfReferenceUID == source.first.FrameOfReferenceUID
    assert np.allclose(img.GetOrigin(), [float(v) for v in source.datasets[0].ImagePositionPatient],
                       atol=1e-4)
    assert np.allclose(img.GetSpacing()[:2], [float(v) for v in source.first.PixelSpacing][::-1])
    assert ds.SeriesNumber == int(source.first.SeriesNumber) + 3000


@pytest.mark.parametrize("kind", ["dx", "photo"])
def test_pm_of_pictures_without_frame_of_reference(tmp_path, kind):
    if kind == "dx":
        source, image = load_single(shared_file("highdicom_test_files", "dx_image.dcm"))
        shape = image.shape[1:]
    else:
        picture = (np.random.default_rng(1).random((3, 40, 30)) * 255).astype(np.uint8)
        source = create_photo_study(picture, tmp_path / "photo.dcm")
        shape = (40, 30)
    assert not source.first.get("FrameOfReferenceUID")
    values = np.random.default_rng(2).random(shape)
    path = write_dicom_pm(values, source, tmp_path / "pm.dcm", method="gradcam", **MODEL)
    ds, img = _check_pm(path, source, values, tmp_path)
    # the IOD requires a Frame of Reference: the map gets its own, shared with nothing: a valid
    # UID that no source attribute holds, new for each map written, with the pixel grid's own
    # geometry (origin 0, identity orientation)
    for_uid = pydicom.uid.UID(ds.FrameOfReferenceUID)
    assert for_uid.is_valid
    source_uids = {str(e.value) for e in source.first.iterall() if e.VR == "UI" and e.value}
    assert for_uid not in source_uids
    again = pydicom.dcmread(write_dicom_pm(values, source, tmp_path / "pm2.dcm", method="gradcam",
                                           **MODEL))
    assert again.FrameOfReferenceUID != for_uid
    frame = ds.PerFrameFunctionalGroupsSequence[0]
    assert [float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient] == [0, 0, 0]
    shared = ds.SharedFunctionalGroupsSequence[0]
    assert [float(v) for v in shared.PlaneOrientationSequence[0].ImageOrientationPatient] == \
        [1, 0, 0, 0, 1, 0]
    assert img.GetSize()[:2] == (int(source.first.Columns), int(source.first.Rows))


def test_pm_quantities_and_bad_input(tmp_path):
    assert quantity_code("uncertainty").meaning == "Predictive entropy"
    assert quantity_code("saliency", "occlusion").value == "130404"
    with pytest.raises(InputError, match="quantity"):
        quantity_code("colour")
    picture = np.zeros((3, 8, 6), np.uint8)
    source = create_photo_study(picture, tmp_path / "photo.dcm")
    with pytest.raises(InputError, match="shape"):
        write_dicom_pm(np.zeros((6, 8)), source, tmp_path / "pm.dcm", **MODEL)
    with pytest.raises(InputError, match="NaN"):
        write_dicom_pm(np.full((8, 6), np.nan), source, tmp_path / "pm.dcm", **MODEL)
    path = write_dicom_pm(np.full((8, 6), 0.25), source, tmp_path / "u.dcm", quantity="uncertainty",
                          method="tta-entropy", **MODEL)
    assert_dciodvfy_clean(path)


def _real_world(ds) -> np.ndarray:
    """Stored frames through the Real World Value Mapping, as (I, J, K) in stored frame order."""
    mapping = ds.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0]
    frames = ds.pixel_array.reshape(-1, ds.Rows, ds.Columns).astype(np.float64)
    values = frames * float(mapping.RealWorldValueSlope) + float(mapping.RealWorldValueIntercept)
    return np.transpose(values, (2, 1, 0))


def test_uint16_pm_of_the_mr_crop_keeps_the_values_within_half_a_step(tmp_path):
    """35 x 51 frames (1785 pixels, odd): unsigned 16-bit PixelData, the mapping's slope and
    intercept give back every value within half a step; highdicom applies the same mapping."""
    folder = shared_path("hippocampus", "dicom_study1", "13_HCropVolume")
    source, volume = load_series(sorted(folder.glob("*.dcm")))
    values = (np.random.default_rng(3).random(volume.shape) * 3 - 1).astype(np.float32)
    path = write_dicom_pm(values, source, tmp_path / "pm.dcm", method="gradcam",
                          encoding="uint16", **MODEL)
    assert_dciodvfy_clean(path)
    ds = pydicom.dcmread(path)
    assert "FloatPixelData" not in ds and ds.BitsAllocated == 16 and ds.PixelRepresentation == 0
    mapping = ds.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0]
    slope = float(mapping.RealWorldValueSlope)
    assert slope == pytest.approx((values.max() - values.min()) / 65535, rel=1e-12)
    assert float(mapping.RealWorldValueIntercept) == float(values.min())
    assert (mapping.RealWorldValueFirstValueMapped, mapping.RealWorldValueLastValueMapped) == (
        0, 65535)
    assert mapping.QuantityDefinitionSequence[0].ConceptCodeSequence[0].CodeValue == "130403"
    # frames are stored in source order (ascending along the normal) and reference their slice
    refs = [item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
            for item in ds.PerFrameFunctionalGroupsSequence]
    assert refs == [d.SOPInstanceUID for d in source.datasets]
    error = np.abs(_real_world(ds) - values.astype(np.float64))
    assert error.max() <= slope / 2 * (1 + 1e-9)
    assert error.max() > slope / 4  # quantised, not a float copy
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        image = hd.imread(path)
        frame = image.get_frame(1, apply_real_world_transform=True)
    assert np.abs(frame.T - values[:, :, 0]).max() <= slope / 2 * (1 + 1e-9)


def test_uint16_pm_of_a_photo_and_a_constant_map(tmp_path):
    picture = (np.random.default_rng(4).random((3, 33, 45)) * 255).astype(np.uint8)
    source = create_photo_study(picture, tmp_path / "photo.dcm")
    values = np.random.default_rng(5).random((33, 45))
    path = write_dicom_pm(values, source, tmp_path / "pm.dcm", encoding="uint16", **MODEL)
    assert_dciodvfy_clean(path)
    ds = pydicom.dcmread(path)
    slope = float(ds.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0]
                  .RealWorldValueSlope)
    recovered = _real_world(ds)[:, :, 0]
    assert np.abs(recovered - values.astype(np.float32)).max() <= slope / 2 * (1 + 1e-9)
    constant = write_dicom_pm(np.full((33, 45), 0.25), source, tmp_path / "c.dcm",
                              encoding="uint16", **MODEL)
    assert_dciodvfy_clean(constant)
    assert np.all(_real_world(pydicom.dcmread(constant)) == 0.25)
    with pytest.raises(InputError, match="encoding"):
        write_dicom_pm(values, source, tmp_path / "x.dcm", encoding="uint8", **MODEL)
