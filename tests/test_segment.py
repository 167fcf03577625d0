"""`medxai segment` end to end on real inputs: every DICOM written passes dciodvfy and re-reads
with pydicom and highdicom; SEGs of CT round-trip through dcmqi onto the source grid; NIfTI
outputs carry the input's affine; the CLI's exit codes, --overwrite and path safety."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pydicom.data
import pytest
import SimpleITK as sitk
from click.testing import CliRunner
from PIL import Image

from medxai.cli.main import cli
from medxai.io.readers import load_image
from medxai.pipeline import SegmentOptions, segment_path
from tests.conftest import SHARED, require_tool
from tests.helpers_dicom import dciodvfy

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "sample_data"


def dciodvfy_errors(path: Path) -> list[str]:
    """dciodvfy's Error lines (the tests' dciodvfy: see tests/helpers_dicom.dciodvfy_tool)."""
    return dciodvfy(path)[0]


def check_dicom_outputs(folder: Path, source_uids: set[str], study_uid: str | None) -> None:
    """Every DICOM in ``folder`` validates, re-reads, references the source and is new."""
    dicoms = sorted(folder.rglob("*.dcm"))
    assert any(p.name == "seg.dcm" for p in dicoms)
    for p in dicoms:
        errors = dciodvfy_errors(p)
        assert not errors, f"{p.relative_to(folder)}:\n" + "\n".join(errors)
        ds = pydicom.dcmread(p)
        if p.name == "source_photo.dcm":
            continue
        assert ds.SOPInstanceUID not in source_uids
        if study_uid:
            assert ds.StudyInstanceUID == study_uid
    seg = hd.seg.segread(folder / "seg.dcm")
    refs = {str(i.ReferencedSOPInstanceUID) for s in seg.ReferencedSeriesSequence
            for i in s.ReferencedInstanceSequence}
    assert refs and refs <= source_uids | {str(pydicom.dcmread(p).SOPInstanceUID)
                                           for p in folder.glob("source_photo.dcm")}
    for p in (folder / "overlay_sc").glob("*.dcm"):
        sc = hd.imread(str(p)) if hasattr(hd, "imread") else pydicom.dcmread(p)
        assert "DERIVED" in list(sc.ImageType)


def _source_uids(loaded) -> set[str]:
    return {str(ds.SOPInstanceUID) for ds in loaded.dicom.datasets} if loaded.dicom else set()


# ----------------------------------------------------------------------------------------------
# 3D: CT series
# ----------------------------------------------------------------------------------------------

CT_INPUTS = [
    pytest.param(SAMPLES / "ct_oblique_series", id="sample-oblique-ct-series"),
    pytest.param(SHARED / "dicom/totalsegmentator_tests/tests/reference_files/example_ct_dicom",
                 id="totalsegmentator-ct-series-j2k"),
    pytest.param(SHARED / "dicom/dcmqi_data/data/segmentations/ct-3slice", id="dcmqi-ct-3slice"),
    pytest.param(SHARED / "dicom/dcmqi_data/data/segmentations/23x38x3/multiframe/mf.dcm",
                 id="dcmqi-enhanced-ct-multiframe"),
]


@pytest.mark.parametrize("src", CT_INPUTS)
def test_ct_outputs_validate_and_round_trip_through_dcmqi(src: Path, ct_bundle, tmp_path: Path) -> None:
    if not src.exists():
        pytest.skip(f"real test data not available: {src}")
    loaded = load_image(src)
    res = segment_path(src, ct_bundle, tmp_path, SegmentOptions(device="cpu"))
    out = res.output_dir
    check_dicom_outputs(out, _source_uids(loaded), loaded.image.meta["study_instance_uid"])
    # the NIfTI label map carries exactly the input's affine and grid
    lab = nib.load(str(out / "labels.nii.gz"))
    np.testing.assert_allclose(lab.affine, loaded.image.affine.numpy(), atol=1e-4)
    assert lab.shape == tuple(loaded.image.shape[1:])
    labels = np.asarray(lab.dataobj)
    if loaded.dicom.is_multiframe:
        return  # dcmqi's reader wants one file per source slice
    # dcmqi (3D Slicer's converter) puts the SEG back on the source grid, voxel for voxel
    exe = require_tool("segimage2itkimage")
    conv = tmp_path / "dcmqi"
    conv.mkdir()
    proc = subprocess.run([exe, "--inputDICOM", str(out / "seg.dcm"), "--outputDirectory", str(conv),
                           "-t", "nrrd", "--mergeSegments"], capture_output=True, text=True, timeout=120)
    files = sorted(conv.glob("*.nrrd"))
    if not labels.any():
        pytest.skip("the test model found nothing here; dcmqi writes no volume for an empty SEG")
    assert files, proc.stdout + proc.stderr
    ref = sitk.ReadImage(str(files[0]))
    first = loaded.dicom.datasets[0]
    np.testing.assert_allclose(ref.GetOrigin(), [float(v) for v in first.ImagePositionPatient], atol=1e-3)
    iop = np.asarray([float(v) for v in first.ImageOrientationPatient])
    direction = np.asarray(ref.GetDirection()).reshape(3, 3)
    np.testing.assert_allclose(direction[:, 0], iop[:3], atol=1e-4)
    np.testing.assert_allclose(direction[:, 1], iop[3:], atol=1e-4)
    dcmqi_labels = np.transpose(sitk.GetArrayFromImage(ref), (2, 1, 0))  # -> (I, J, K)
    assert dcmqi_labels.shape == labels.shape
    np.testing.assert_array_equal(dcmqi_labels > 0, labels > 0)


def test_nifti_volume_input_keeps_affine(ct_bundle, tmp_path: Path) -> None:
    src = SAMPLES / "ct_oblique.nii.gz"
    res = segment_path(src, ct_bundle, tmp_path, SegmentOptions(device="cpu", explain="none"))
    assert sorted(res.files) == ["labels.json", "labels.nii.gz", "preview.png", "report.json"]
    np.testing.assert_allclose(nib.load(str(res.output_dir / "labels.nii.gz")).affine,
                               nib.load(str(src)).affine, atol=1e-5)
    report = json.loads((res.output_dir / "report.json").read_text())
    assert report["model"]["weights_sha256"] == ct_bundle.weights_sha256
    assert report["labels"][0]["name"] == "lesion" and "volume_ml" in report["labels"][0]


# ----------------------------------------------------------------------------------------------
# 2D: photos and single images
# ----------------------------------------------------------------------------------------------

def _isic_dicom(tmp: Path) -> Path:
    from medxai.samples import write_dermoscopy_dicom

    src = sorted((SHARED / "isic2018/val/images").glob("*.jpg"))
    if not src:
        pytest.skip("real test data not available: ../shared/data/isic2018")
    rgb = np.asarray(Image.open(src[0]).convert("RGB").resize((160, 120)))
    return write_dermoscopy_dicom(rgb, tmp / "isic_photo.dcm")


@pytest.mark.parametrize("name", ["sample", "isic", "SC_ybr_full_422_uncompressed.dcm", "SC_rgb_jpeg_dcmtk.dcm",
                                  "US_Explicit_Big_RGB", "ExplVR_BigEnd.dcm"])
def test_rgb_dicom_outputs_validate(name: str, rgb_bundle, tmp_path: Path) -> None:
    if name == "sample":
        src = SAMPLES / "dermoscopy.dcm"
    elif name == "isic":
        src = _isic_dicom(tmp_path)
    elif name == "US_Explicit_Big_RGB":
        src = SHARED / "dicom/notZaki_DICOMSamples/US_Explicit_Big_RGB.dcm"
        if not src.exists():
            pytest.skip(f"real test data not available: {src}")
    else:
        src = Path(pydicom.data.get_testdata_file(name))
    loaded = load_image(src)
    res = segment_path(src, rgb_bundle, tmp_path / "out", SegmentOptions(device="cpu"))
    check_dicom_outputs(res.output_dir, _source_uids(loaded), loaded.image.meta["study_instance_uid"])
    seg = hd.seg.segread(res.output_dir / "seg.dcm")
    assert seg.get_segment_description(1).SegmentLabel == "lesion"
    # photos have no patient geometry: no Frame of Reference is invented
    assert "FrameOfReferenceUID" not in pydicom.dcmread(src) or "FrameOfReferenceUID" in seg


@pytest.mark.parametrize("name", ["MR_small.dcm", "CT_small.dcm"])
def test_grey_single_slice_outputs_validate(name: str, grey_bundle, tmp_path: Path) -> None:
    src = Path(pydicom.data.get_testdata_file(name))
    loaded = load_image(src)
    res = segment_path(src, grey_bundle, tmp_path, SegmentOptions(device="cpu"))
    check_dicom_outputs(res.output_dir, _source_uids(loaded), loaded.image.meta["study_instance_uid"])
    seg = pydicom.dcmread(res.output_dir / "seg.dcm")
    assert seg.FrameOfReferenceUID == loaded.dicom.first.FrameOfReferenceUID


def test_photo_mask_overlays_the_photo(rgb_bundle, tmp_path: Path) -> None:
    """Opened as Slicer/ITK opens them, the JPEG and the label NIfTI share one grid, and the
    mask is neither transposed nor flipped relative to the photo."""
    src = SAMPLES / "dermoscopy.jpg"
    res = segment_path(src, rgb_bundle, tmp_path, SegmentOptions(device="cpu", explain="none"))
    photo = sitk.ReadImage(str(src))
    mask = sitk.ReadImage(str(res.output_dir / "labels.nii.gz"))
    assert mask.GetSize()[:2] == photo.GetSize()  # (W, H)
    np.testing.assert_allclose(mask.GetOrigin()[:2], photo.GetOrigin(), atol=1e-6)
    np.testing.assert_allclose(np.asarray(mask.GetDirection()).reshape(3, 3)[:2, :2],
                               np.asarray(photo.GetDirection()).reshape(2, 2), atol=1e-6)
    np.testing.assert_allclose(mask.GetSpacing()[:2], photo.GetSpacing(), atol=1e-6)
    # pixel (row r, col c) of the mask is pixel (r, c) of the photo: compare with the prediction
    from medxai.inference import predict

    pred = predict(rgb_bundle, load_image(src).image, device="cpu").labels[0].numpy()  # (W, H)
    arr = sitk.GetArrayFromImage(mask)[0]  # (H, W) as ITK shows it
    np.testing.assert_array_equal(arr, pred.T)


def test_photo_to_pacs_creates_placeholder_study(rgb_bundle, tmp_path: Path) -> None:
    res = segment_path(SAMPLES / "dermoscopy.jpg", rgb_bundle, tmp_path,
                       SegmentOptions(device="cpu", formats=["dicom-seg", "dicom-sc", "json"]))
    photo = pydicom.dcmread(res.output_dir / "source_photo.dcm")
    assert "MEDXAI" in str(photo.PatientName).upper()
    assert "FrameOfReferenceUID" not in photo
    check_dicom_outputs(res.output_dir, set(), photo.StudyInstanceUID)


def test_wrong_input_for_model_is_a_clear_error(rgb_bundle, tmp_path: Path) -> None:
    from medxai.errors import ModelMismatchError

    with pytest.raises(ModelMismatchError, match="2D .*pictures.*volume"):
        segment_path(SAMPLES / "ct_oblique_series", rgb_bundle, tmp_path, SegmentOptions(device="cpu"))
    assert not any(tmp_path.iterdir())  # nothing half-written


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------

def test_cli_exit_codes_overwrite_and_outputs(rgb_bundle, tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "out"
    args = ["segment", str(SAMPLES / "dermoscopy.jpg"), "-m", str(rgb_bundle.path), "-o", str(out),
            "--device", "cpu", "--json"]
    res = runner.invoke(cli, args)
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["failures"] == [] and len(data["results"]) == 1
    folder = out / "dermoscopy"
    assert {"labels.nii.gz", "labels.json", "preview.png", "report.json"} <= {p.name for p in folder.iterdir()}
    stamp = (folder / "report.json").stat().st_mtime_ns
    # existing outputs are kept without --overwrite (exit 2, message), replaced with it
    res = runner.invoke(cli, args)
    assert res.exit_code == 2 and "exists already" in res.output and "Traceback" not in res.output
    assert (folder / "report.json").stat().st_mtime_ns == stamp
    res = runner.invoke(cli, args + ["--overwrite"])
    assert res.exit_code == 0
    assert (folder / "report.json").stat().st_mtime_ns != stamp
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp folders left
    # bad input: exit 2, no traceback
    bad = tmp_path / "broken.dcm"
    bad.write_bytes(b"DICM" * 10)
    res = runner.invoke(cli, ["segment", str(bad), "-m", str(rgb_bundle.path), "-o", str(out)])
    assert res.exit_code == 2 and "Traceback" not in res.output and "broken.dcm" in res.output
    # unknown model name: exit 2 with the list of bundled models
    res = runner.invoke(cli, ["segment", str(SAMPLES / "dermoscopy.jpg"), "-m", "no-such-model"])
    assert res.exit_code == 2 and "isic2018-lesion-unet" in res.output


def test_header_values_never_make_paths(rgb_bundle, tmp_path: Path) -> None:
    ds = pydicom.dcmread(SAMPLES / "dermoscopy.dcm")
    ds.SeriesDescription = "../../../escaped"
    ds.PatientName = "../../evil"
    ds.PatientID = "../../evil"
    src = tmp_path / "in" / "..%2F..%2Fevil name.dcm"
    src.parent.mkdir()
    ds.save_as(src)
    out = tmp_path / "out"
    res = CliRunner().invoke(cli, ["segment", str(src), "-m", str(rgb_bundle.path), "-o", str(out),
                                   "--device", "cpu", "--explain", "none"])
    assert res.exit_code == 0, res.output
    written = [p for p in tmp_path.rglob("*") if p.is_file() and "in" not in p.relative_to(tmp_path).parts[:1]]
    assert written and all(out.resolve() in p.resolve().parents for p in written)
    assert not (tmp_path / "escaped").exists() and not (tmp_path.parent / "evil").exists()
    shutil.rmtree(out)


def test_a_dicom_object_that_cannot_be_made_leaves_the_others(rgb_bundle, tmp_path: Path) -> None:
    """An RTSTRUCT of a photo cannot be made (no Frame of Reference): it alone is skipped with
    the reason; the Parametric Map and the SR are still written, and every file in the folder
    is one the result lists."""
    src = Path(__file__).resolve().parents[1] / "sample_data" / "dermoscopy.dcm"
    fmts = ["dicom-seg", "dicom-pm", "dicom-rtstruct", "dicom-sr", "json"]
    res = segment_path(src, rgb_bundle, tmp_path, SegmentOptions(device="cpu", formats=fmts))
    report = res.report
    assert [s["formats"] for s in report["skipped_outputs"]] == [["dicom-rtstruct"]]
    assert {"seg.dcm", "sr.dcm", "pm_uncertainty.dcm"} <= set(res.files)
    assert any(f.startswith("pm_saliency_") for f in res.files)
    on_disk = {p.relative_to(res.output_dir).as_posix() for p in res.output_dir.rglob("*")
               if p.is_file()}
    assert on_disk == set(res.files)
