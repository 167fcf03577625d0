"""Writers: write, read back with independent tools, validate (dciodvfy, highdicom, dcmqi)."""

from __future__ import annotations

import json
import os
import subprocess
import warnings
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
from PIL import Image

from tests.helpers_dicom import (
    assert_dciodvfy_clean,
    find_tool,
    frame_position,
    load_multiframe,
    load_series,
    load_single,
    needs_shared,
    pydicom_file,
    shared_file,
)
from medxai._version import __version__
from medxai.errors import InputError, MedxaiError, UnsupportedInputError
from medxai.io.types import DicomSource
from medxai.io.writers import (
    PLACEHOLDER_PATIENT_ID,
    PLACEHOLDER_PATIENT_NAME,
    create_photo_study,
    label_statistics,
    overlay_rgb,
    sidecar_path,
    write_dicom_sc,
    write_dicom_seg,
    write_nifti_labels,
    write_nifti_map,
    write_preview_png,
    write_report_json,
)
from medxai.io.writers._atomic import atomic_path, write_text_atomic

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # odd person names in test data

LABELS = [
    {"value": 0, "name": "background", "color": [0, 0, 0]},
    {"value": 1, "name": "lesion", "color": [255, 0, 0]},
    {"value": 2, "name": "liver", "color": [0, 255, 0]},
]
MODEL = ("test-unet", "1.2.3")
PATIENT_KEYS = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex")


def _sop_uid(ds: pydicom.Dataset) -> str:
    """SOPInstanceUID, or the file meta's when the dataset's is empty (anonymised exports)."""
    return ds.SOPInstanceUID or ds.file_meta.MediaStorageSOPInstanceUID


def _read_seg(path: Path) -> hd.seg.Segmentation:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return hd.seg.segread(path)


def _check_derived(ds: pydicom.Dataset, src: pydicom.Dataset) -> None:
    assert ds.StudyInstanceUID == src.StudyInstanceUID
    assert ds.SeriesInstanceUID != src.SeriesInstanceUID
    assert ds.SOPInstanceUID != src.SOPInstanceUID
    for kw in PATIENT_KEYS:
        assert str(ds.get(kw, "")) == str(src.get(kw, "")), kw
    assert ds.Manufacturer == "medxai"
    assert __version__ in str(ds.SoftwareVersions)


def _seg_labels_by_instance(seg: hd.seg.Segmentation, source: DicomSource) -> np.ndarray:
    """SEG pixels as a label map (I, J, K) with segment numbers, via the source instances."""
    uids = [_sop_uid(ds) for ds in source.datasets]
    px = seg.get_pixels_by_source_instance(uids, combine_segments=True,
                                           assert_missing_frames_are_empty=True)
    return np.transpose(px, (2, 1, 0))


def _seg_labels_by_frame(seg: hd.seg.Segmentation, source: DicomSource) -> np.ndarray:
    px = seg.get_pixels_by_source_frame(source.first.SOPInstanceUID, source.frame_numbers,
                                        combine_segments=True,
                                        assert_missing_frames_are_empty=True)
    return np.transpose(px, (2, 1, 0))


# ---------------------------------------------------------------------------------------------
# atomic writes
# ---------------------------------------------------------------------------------------------

def test_atomic_write_replaces_and_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "sub" / "report.json"
    write_text_atomic(target, "old")
    assert target.read_text() == "old"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert sorted(p.name for p in target.parent.iterdir()) == ["report.json"]
    with atomic_path(tmp_path / "a.nii.gz") as tmp:
        assert tmp.name.endswith(".nii.gz") and tmp.parent == tmp_path
        tmp.write_bytes(b"x")
    mode = (tmp_path / "a.nii.gz").stat().st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask


# ---------------------------------------------------------------------------------------------
# NIfTI
# ---------------------------------------------------------------------------------------------

def test_nifti_labels_keep_the_affine_and_name_the_labels(tmp_path):
    # an oblique affine with float32-representable entries: it must come back exactly
    affine = np.array([[-0.75, 0.0, 0.0, 120.5],
                       [0.0, 0.0, -2.5, -30.25],
                       [0.0, -0.75, 0.0, 64.0],
                       [0.0, 0.0, 0.0, 1.0]])
    labels = np.zeros((7, 5, 4), dtype=np.uint8)
    labels[1:3, 2:4, 1] = 1
    labels[5, 0, 3] = 2
    path = write_nifti_labels(labels, affine, tmp_path / "mask.nii.gz", LABELS,
                              model_name=MODEL[0], model_version=MODEL[1])
    img = nib.load(path)
    assert np.array_equal(img.affine, affine)
    assert np.array_equal(img.header.get_sform(), affine)
    assert np.array_equal(img.header.get_qform(), affine)
    assert int(img.header["sform_code"]) == 1 and int(img.header["qform_code"]) == 1
    assert img.get_data_dtype() == np.uint8
    assert np.array_equal(np.asarray(img.dataobj), labels)
    side = json.loads(sidecar_path(path).read_text())
    assert sidecar_path(path).name == "mask.json"
    assert {e["value"]: e["name"] for e in side["labels"]} == {0: "background", 1: "lesion",
                                                               2: "liver"}
    assert side["present"] == [1, 2] and side["model"]["name"] == MODEL[0]


def test_nifti_2d_is_written_as_one_slice_and_maps_are_float(tmp_path):
    affine = np.diag([-1.0, -1.0, 1.0, 1.0])
    labels = np.zeros((6, 4), dtype=bool)
    labels[2, 1] = True
    img = nib.load(write_nifti_labels(labels, affine, tmp_path / "m.nii", LABELS))
    assert img.shape == (6, 4, 1) and np.asarray(img.dataobj)[2, 1, 0] == 1
    assert np.array_equal(img.affine, affine)
    sal = np.random.default_rng(0).random((6, 4)).astype(np.float64)
    img = nib.load(write_nifti_map(sal, affine, tmp_path / "s.nii.gz"))
    # default: 16-bit integers with scl_slope/scl_inter spanning the map, half a step at most
    assert img.get_data_dtype() == np.uint16 and img.shape == (6, 4, 1)
    step = (sal.max() - sal.min()) / 65535
    assert np.abs(np.asarray(img.dataobj)[..., 0] - sal).max() <= step / 2 + 1e-9
    exact = nib.load(write_nifti_map(sal, affine, tmp_path / "e.nii.gz", exact=True))
    assert exact.get_data_dtype() == np.float32
    assert np.array_equal(np.asarray(exact.dataobj)[..., 0], sal.astype(np.float32))
    # never outside the map's range (a 0..1 map reads back in 0..1), signed maps too
    rng = np.random.default_rng(1)
    for k, signed in enumerate(rng.normal(size=(20, 30, 40)).astype(np.float32) * 7):
        back = np.asarray(nib.load(write_nifti_map(signed, affine, tmp_path / f"n{k}.nii.gz")).dataobj)
        assert signed.min() <= back.min() and back.max() <= signed.max()
        assert np.abs(back[..., 0] - signed).max() <= (signed.max() - signed.min()) / 65535 / 2 * 1.001
    flat = nib.load(write_nifti_map(np.full((3, 3), 0.25), affine, tmp_path / "f.nii.gz"))
    assert np.array_equal(np.asarray(flat.dataobj), np.full((3, 3, 1), 0.25))
    # constant maps and ranges too small for a float32 slope stay float32, exactly
    assert flat.get_data_dtype() == np.float32
    tiny = np.array([[0.0, 1e-41], [1e-38, 0.0]], np.float32)
    back = nib.load(write_nifti_map(tiny, affine, tmp_path / "tiny.nii.gz"))
    assert back.get_data_dtype() == np.float32
    assert np.array_equal(np.asarray(back.dataobj)[..., 0], tiny)
    # a sheared grid (gantry tilt): the sform keeps it, the qform (which cannot) is switched off
    tilted = np.array([[0.5, 0, 0, 0], [0, 0.5, 0.25, 0], [0, 0, 2.0, 0], [0, 0, 0, 1.0]])
    img = nib.load(write_nifti_map(sal, tilted, tmp_path / "t.nii.gz"))
    assert np.array_equal(img.affine, tilted) and int(img.header["qform_code"]) == 0


def test_nifti_rejects_bad_input(tmp_path):
    with pytest.raises(InputError):
        write_nifti_labels(np.zeros((3, 3), np.uint8), np.eye(4), tmp_path / "m.png")
    with pytest.raises(InputError):
        write_nifti_labels(np.full((3, 3), 0.5), np.eye(4), tmp_path / "m.nii")
    with pytest.raises(InputError):
        write_nifti_labels(np.zeros((3, 3), np.uint8), np.eye(3), tmp_path / "m.nii")
    with pytest.raises(InputError):
        write_nifti_map(np.full((3, 3), np.nan), np.eye(4), tmp_path / "m.nii")
    assert not list(tmp_path.iterdir())


# ---------------------------------------------------------------------------------------------
# DICOM SEG
# ---------------------------------------------------------------------------------------------

def _dcmqi_labels(seg_path: Path, source: DicomSource, shape: tuple[int, ...],
                  out: Path) -> tuple[np.ndarray, int]:
    """SEG -> dcmqi's segimage2itkimage (segments merged) -> labels on the source grid (I, J, K).

    dcmqi reconstructs the extent of the frames present in the SEG, so its volume is placed on the
    source grid by its origin; its direction and spacing must be the source's. Returns the labels
    and the index of the source slice at dcmqi's origin.
    """
    import SimpleITK as sitk

    tool = find_tool("segimage2itkimage")
    if tool is None:
        pytest.skip("dcmqi's segimage2itkimage is not installed (pip install dcmqi)")
    out.mkdir()
    run = subprocess.run([tool, "--inputDICOM", str(seg_path), "--outputDirectory", str(out),
                          "--mergeSegments"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    (nrrd,) = sorted(out.glob("*.nrrd"))
    img = sitk.ReadImage(str(nrrd))
    first = source.first
    iop = np.array([float(v) for v in first.ImageOrientationPatient])
    normal = np.cross(iop[:3], iop[3:])
    direction = np.array(img.GetDirection()).reshape(3, 3)  # columns: the i, j, k axes
    assert np.allclose(direction[:, 0], iop[:3], atol=1e-5)
    assert np.allclose(direction[:, 1], iop[3:], atol=1e-5)
    assert np.allclose(direction[:, 2], normal, atol=1e-5)
    # PixelSpacing is (between rows, between columns) = (along j, along i)
    assert np.allclose(img.GetSpacing()[:2], [float(v) for v in first.PixelSpacing][::-1],
                       atol=1e-6)
    positions = np.array([[float(v) for v in ds.ImagePositionPatient] for ds in source.datasets])
    distance = np.linalg.norm(positions - np.asarray(img.GetOrigin()), axis=1)
    k0 = int(distance.argmin())
    assert distance[k0] < 1e-3, "dcmqi's origin is not the position of a source slice"
    data = np.transpose(sitk.GetArrayFromImage(img), (2, 1, 0))  # sitk arrays are (k, j, i)
    full = np.zeros(shape, dtype=data.dtype)
    full[..., k0:k0 + data.shape[2]] = data
    if data.shape[2] > 1:
        assert np.isclose(img.GetSpacing()[2], np.linalg.norm(positions[1] - positions[0]),
                          atol=1e-3)
    return full, k0


def _ct_series(name: str) -> list[Path]:
    if name == "sample-oblique":
        folder = Path(__file__).resolve().parents[1] / "sample_data" / "ct_oblique_series"
        if not folder.is_dir():
            pytest.skip("sample_data/ct_oblique_series is missing "
                        "(python sample_data/make_samples.py)")
        return sorted(folder.glob("*.dcm"))
    if name == "dcmqi-ct-3slice":
        return sorted(shared_file("dcmqi_data", "data", "segmentations", "ct-3slice").glob("*.dcm"))
    folder = shared_file("totalsegmentator_tests", "tests", "reference_files", "example_ct_dicom")
    return sorted(folder.iterdir())[:6]  # 6 of its 20 JPEG 2000 slices keep the test fast


@pytest.mark.parametrize("name", ["dcmqi-ct-3slice", "totalsegmentator-ct", "sample-oblique"])
def test_seg_of_ct_series_matches_dcmqi_and_highdicom(tmp_path, name):
    source, volume = load_series(_ct_series(name))
    if name == "totalsegmentator-ct":
        # this anonymised export has empty Study/Series/SOP Instance UIDs: a clear error...
        with pytest.raises(InputError, match="StudyInstanceUID, SeriesInstanceUID"):
            write_dicom_seg(np.zeros(volume.shape, np.uint8), source, LABELS, *MODEL,
                            tmp_path / "x.dcm")
        # ...and with UIDs restored (as a PACS export has them) the series works
        study, series = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
        for ds in source.datasets:
            ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    if name == "dcmqi-ct-3slice":
        # files 01..03 go down in z: sorted along the normal they come in reverse
        assert [p.name for p in source.paths] == ["03.dcm", "02.dcm", "01.dcm"]
    threshold = np.percentile(volume, 80)
    labels = (volume > threshold).astype(np.uint8)
    labels[: volume.shape[0] // 3] *= 2  # two labels, not symmetric in i/j
    assert all(len(np.unique(labels[..., k])) == 3 for k in (0, labels.shape[2] - 1))
    path = write_dicom_seg(labels, source, LABELS, *MODEL, tmp_path / "seg.dcm")
    assert_dciodvfy_clean(path)

    ds = pydicom.dcmread(path)
    first = source.first
    _check_derived(ds, first)
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4" and ds.SegmentationType == "BINARY"
    assert ds.FrameOfReferenceUID == first.FrameOfReferenceUID
    assert "not for diagnostic use" in ds.SeriesDescription
    segments = {int(s.SegmentNumber): s for s in ds.SegmentSequence}
    assert [segments[n].SegmentLabel for n in (1, 2)] == ["lesion", "liver"]
    assert segments[1].SegmentedPropertyTypeCodeSequence[0].CodeValue == "52988006"  # Lesion
    algo = segments[1].SegmentationAlgorithmIdentificationSequence[0]
    assert (algo.AlgorithmName, algo.AlgorithmVersion) == MODEL
    assert algo.AlgorithmFamilyCodeSequence[0].CodeMeaning == "Artificial Intelligence"
    assert segments[1].SegmentAlgorithmType == "AUTOMATIC"

    seg = _read_seg(path)
    referenced = {uids[2] for uids in seg.get_source_image_uids()}
    assert referenced == {_sop_uid(d) for d in source.datasets}
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == first.SeriesInstanceUID
    assert np.array_equal(_seg_labels_by_instance(seg, source), labels)
    # with the segments merged, dcmqi's values are the segment numbers (= label values here)
    from_dcmqi, k0 = _dcmqi_labels(path, source, labels.shape, tmp_path / "dcmqi")
    assert k0 == 0  # dcmqi's origin is the first slice's ImagePositionPatient (within 1e-3 mm)
    assert np.array_equal(from_dcmqi, labels)


def test_seg_and_nifti_of_the_reader_output_lie_on_the_same_grid(tmp_path):
    """The reader's image + DicomSource -> NIfTI and SEG; dcmqi's SEG volume = the NIfTI."""
    import SimpleITK as sitk

    from medxai.io.readers import load_image

    folder = Path(__file__).resolve().parents[1] / "sample_data" / "ct_oblique_series"
    if not folder.is_dir():
        pytest.skip("sample_data/ct_oblique_series is missing")
    loaded = load_image(folder)
    image = np.asarray(loaded.image)[0]
    labels = (image > np.percentile(image, 90)).astype(np.uint8)
    nifti = write_nifti_labels(labels, np.asarray(loaded.image.affine), tmp_path / "m.nii.gz",
                               LABELS)
    seg = write_dicom_seg(labels, loaded.dicom, LABELS, *MODEL, tmp_path / "seg.dcm")
    assert_dciodvfy_clean(seg)
    from_seg, k0 = _dcmqi_labels(seg, loaded.dicom, labels.shape, tmp_path / "dcmqi")
    assert np.array_equal(from_seg, labels)
    assert k0 == int(np.argmax(labels.reshape(-1, labels.shape[2]).any(axis=0)))
    ref = sitk.ReadImage(str(nifti))
    tool_out = sorted((tmp_path / "dcmqi").glob("*.nrrd"))[0]
    got = sitk.ReadImage(str(tool_out))
    if labels[..., 0].any():
        assert np.allclose(got.GetOrigin(), ref.GetOrigin(), atol=1e-3)
    assert np.allclose(got.GetDirection(), ref.GetDirection(), atol=1e-5)
    assert np.allclose(got.GetSpacing(), ref.GetSpacing(), atol=1e-4)


@needs_shared
def test_seg_of_non_square_series_is_not_transposed(tmp_path):
    files = sorted(shared_file("dcmqi_data", "data", "segmentations", "23x38x3", "image")
                   .glob("*.dcm"))
    source, volume = load_series(files)
    assert volume.shape == (23, 38, 3)  # 23 columns, 38 rows
    labels = np.zeros(volume.shape, dtype=np.uint8)
    labels[2:5, 10:30, 0] = 1
    labels[20, 1, 2] = 2
    path = write_dicom_seg(labels, source, LABELS, *MODEL, tmp_path / "seg.dcm")
    assert_dciodvfy_clean(path)
    seg = _read_seg(path)
    assert np.array_equal(_seg_labels_by_instance(seg, source), labels)
    # the frame of slice 0 lies where source slice 0 lies
    pos = {tuple(round(float(v), 4) for v in f.PlanePositionSequence[0].ImagePositionPatient)
           for f in seg.PerFrameFunctionalGroupsSequence
           if f.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
           == source.datasets[0].SOPInstanceUID}
    assert pos == {tuple(round(float(v), 4) for v in source.datasets[0].ImagePositionPatient)}


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm"])
def test_seg_of_single_slice(tmp_path, name):
    source, image = load_single(pydicom_file(name))
    labels = (image[0] > np.percentile(image, 70)).astype(np.uint8)
    labels[:5] = 0
    path = write_dicom_seg(labels, source, LABELS, *MODEL, tmp_path / "seg.dcm")
    assert_dciodvfy_clean(path)
    ds = pydicom.dcmread(path)
    _check_derived(ds, source.first)
    assert ds.FrameOfReferenceUID == source.first.FrameOfReferenceUID
    seg = _read_seg(path)
    assert np.array_equal(_seg_labels_by_instance(seg, source)[..., 0], labels)


@needs_shared
def test_seg_of_enhanced_multiframe_references_frames(tmp_path):
    source, volume = load_multiframe(
        shared_file("dcmqi_data", "data", "segmentations", "23x38x3", "multiframe", "mf.dcm"))
    labels = np.zeros(volume.shape[1:], dtype=np.uint8)
    labels[3:9, 5:12, 0] = 1
    labels[10:20, 30:35, 2] = 2
    path = write_dicom_seg(labels, source, LABELS, *MODEL, tmp_path / "seg.dcm")
    assert_dciodvfy_clean(path)
    ds = pydicom.dcmread(path)
    _check_derived(ds, source.first)
    assert ds.FrameOfReferenceUID == source.first.FrameOfReferenceUID
    seg = _read_seg(path)
    assert np.array_equal(_seg_labels_by_frame(seg, source), labels)
    for item in ds.PerFrameFunctionalGroupsSequence:
        ref = item.DerivationImageSequence[0].SourceImageSequence[0]
        assert ref.ReferencedSOPInstanceUID == source.first.SOPInstanceUID
        position = [float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient]
        assert np.allclose(position, frame_position(source.first, int(ref.ReferencedFrameNumber)))


def test_seg_of_ultrasound_cine_without_frame_of_reference(tmp_path):
    source, volume = load_multiframe(pydicom_file("examples_ybr_color.dcm"))
    assert "FrameOfReferenceUID" not in source.first
    labels = np.zeros(volume.shape[1:], dtype=np.uint8)
    labels[100:140, 60:90, 4:7] = 1
    labels[10:20, 10:15, 20] = 2
    path = write_dicom_seg(labels, source, LABELS, *MODEL, tmp_path / "seg.dcm")
    assert_dciodvfy_clean(path)
    ds = pydicom.dcmread(path)
    _check_derived(ds, source.first)
    assert "FrameOfReferenceUID" not in ds  # none invented
    for item in ds.PerFrameFunctionalGroupsSequence:
        assert "PlanePositionSequence" not in item
        ref = item.DerivationImageSequence[0].SourceImageSequence[0]
        assert int(ref.ReferencedFrameNumber) == int(item.FrameContentSequence[0]
                                                     .TemporalPositionIndex)
    seg = _read_seg(path)
    assert np.array_equal(_seg_labels_by_frame(seg, source), labels)


@pytest.mark.parametrize("name", ["SC_rgb_rle.dcm", "examples_rgb_color.dcm", "dx", "us-old-times",
                                  "vl-photo"])
def test_seg_of_pictures_without_frame_of_reference(tmp_path, name):
    if name == "vl-photo":  # no VL Photographic file at hand: an SC header relabelled as one
        path_in = pydicom_file("SC_rgb_rle.dcm")
    elif name == "dx":
        path_in = shared_file("highdicom_test_files", "dx_image.dcm")
    elif name == "us-old-times":  # big endian, StudyTime written '14:04:38' (ACR-NEMA style)
        path_in = shared_file("notZaki_DICOMSamples", "US_Explicit_Big_RGB.dcm")
    else:
        path_in = pydicom_file(name)
    source, image = load_single(path_in)
    if name == "vl-photo":
        source.first.SOPClassUID = pydicom.uid.VLPhotographicImageStorage
        source.first.Modality = "XC"
    labels = np.zeros(image.shape[1:], dtype=np.uint8)
    labels[5:40, 10:20] = 1  # i (columns) 5..40, j (rows) 10..20
    path = write_dicom_seg(labels, source, LABELS, *MODEL, tmp_path / "seg.dcm")
    assert_dciodvfy_clean(path)
    ds = pydicom.dcmread(path)
    _check_derived(ds, source.first)
    assert "FrameOfReferenceUID" not in ds and "PatientOrientation" in ds
    seg = _read_seg(path)
    assert np.array_equal(_seg_labels_by_instance(seg, source)[..., 0], labels)


@needs_shared
def test_seg_of_empty_mask_and_absent_labels(tmp_path):
    files = sorted(shared_file("dcmqi_data", "data", "segmentations", "23x38x3", "image")
                   .glob("*.dcm"))
    source, volume = load_series(files)
    empty = np.zeros(volume.shape, dtype=np.uint8)
    path = write_dicom_seg(empty, source, LABELS, *MODEL, tmp_path / "empty.dcm")
    assert_dciodvfy_clean(path)
    seg = _read_seg(path)
    assert seg.number_of_segments == 2
    assert seg.NumberOfFrames == 2 * 3  # every frame kept when everything is empty
    assert not _seg_labels_by_instance(seg, source).any()
    # label 2 described but absent: its segment is listed, without frames
    only_one = empty.copy()
    only_one[3:6, 4:9, 1] = 1
    path = write_dicom_seg(only_one, source, LABELS, *MODEL, tmp_path / "one.dcm")
    assert_dciodvfy_clean(path)
    seg = _read_seg(path)
    assert seg.number_of_segments == 2 and seg.NumberOfFrames == 1
    assert np.array_equal(_seg_labels_by_instance(seg, source), only_one)


def test_seg_rejects_what_it_cannot_write(tmp_path):
    source, image = load_single(pydicom_file("CT_small.dcm"))
    good = np.zeros(image.shape[1:], dtype=np.uint8)
    with pytest.raises(InputError, match="shape"):
        write_dicom_seg(good.T[:, :-1], source, LABELS, *MODEL, tmp_path / "a.dcm")
    bad = good.copy()
    bad[0, 0] = 7
    with pytest.raises(InputError, match=r"\[7\]"):
        write_dicom_seg(bad, source, LABELS, *MODEL, tmp_path / "a.dcm")
    with pytest.raises(InputError):
        write_dicom_seg(good, source, LABELS[:1], *MODEL, tmp_path / "a.dcm")
    pictures, _ = load_single(pydicom_file("SC_rgb_rle.dcm"))
    two = DicomSource(pictures.datasets * 2, pictures.paths * 2)
    with pytest.raises(UnsupportedInputError):
        write_dicom_seg(np.zeros((100, 100, 2), np.uint8), two, LABELS, *MODEL,
                        tmp_path / "a.dcm")
    assert not list(tmp_path.iterdir())


def test_seg_refuses_frames_it_cannot_reference(tmp_path):
    # 16 frames stored in MR Image Storage, a single-frame SOP class
    path_in = shared_file("notZaki_DICOMSamples", "MR_Explicit_Little_MultiFrame.dcm")
    ds = pydicom.dcmread(path_in, stop_before_pixels=True)
    source = DicomSource([ds], [path_in], frame_numbers=list(range(1, 17)))
    with pytest.raises(UnsupportedInputError, match="single-frame"):
        write_dicom_seg(np.zeros((256, 256, 16), np.uint8), source, LABELS, *MODEL,
                        tmp_path / "a.dcm")
    # several slices of one single-frame image (a Siemens mosaic): SEG refuses, SC references it
    single, image = load_single(pydicom_file("CT_small.dcm"))
    labels = np.zeros(image.shape[1:] + (2,), np.uint8)
    with pytest.raises(UnsupportedInputError, match="mosaic"):
        write_dicom_seg(labels, single, LABELS, *MODEL, tmp_path / "a.dcm")
    rgb = overlay_rgb(np.repeat(image[..., None], 2, axis=-1), labels, None)
    paths = write_dicom_sc(rgb, single, tmp_path / "sc", *MODEL)
    assert len(paths) == 2
    for path in paths:
        sc = _check_sc(path, single.first, None)
        assert "ImagePositionPatient" not in sc and "FrameOfReferenceUID" not in sc


def test_seg_label_codes_can_be_given(tmp_path):
    source, image = load_single(pydicom_file("MR_small.dcm"))
    info = [{"value": 3, "name": "brain", "color": "#8080ff",
             "category": {"value": "91723000", "scheme": "SCT", "meaning": "Anatomical Structure"},
             "type": ("12738006", "SCT", "Brain")}]
    labels = np.zeros(image.shape[1:], dtype=np.uint8)
    labels[20:40, 20:40] = 3
    path = write_dicom_seg(labels, source, info, *MODEL, tmp_path / "seg.dcm")
    assert_dciodvfy_clean(path)
    item = pydicom.dcmread(path).SegmentSequence[0]
    assert item.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "91723000"
    assert item.SegmentedPropertyTypeCodeSequence[0].CodeMeaning == "Brain"
    assert item.SegmentDescription == "label value 3"


# ---------------------------------------------------------------------------------------------
# DICOM Secondary Capture
# ---------------------------------------------------------------------------------------------

def _check_sc(path: Path, src: pydicom.Dataset, frame: int | None) -> pydicom.Dataset:
    assert_dciodvfy_clean(path)
    ds = pydicom.dcmread(path)
    _check_derived(ds, src)
    assert ds.SOPClassUID == pydicom.uid.SecondaryCaptureImageStorage
    assert list(ds.ImageType)[:2] == ["DERIVED", "SECONDARY"]
    assert ds.BurnedInAnnotation == "YES"
    assert "not for diagnostic use" in ds.SeriesDescription
    assert MODEL[0] in ds.DerivationDescription
    ref = ds.SourceImageSequence[0]
    assert ref.ReferencedSOPInstanceUID == src.SOPInstanceUID
    assert ref.ReferencedSOPClassUID == src.SOPClassUID
    if frame is None:
        assert "ReferencedFrameNumber" not in ref
    else:
        assert int(ref.ReferencedFrameNumber) == frame
    series = ds.ReferencedSeriesSequence[0]
    assert series.SeriesInstanceUID == src.SeriesInstanceUID
    assert series.ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
    equipment = {item.Manufacturer: item for item in ds.ContributingEquipmentSequence}
    assert equipment["medxai"].SoftwareVersions == __version__
    assert equipment["medxai"].PurposeOfReferenceCodeSequence[0].CodeValue == "109102"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hd.imread(path)
    return ds


@pytest.mark.parametrize("name", ["23x38x3", "sample-oblique"])
def test_sc_of_series_one_per_slice_with_geometry(tmp_path, name):
    if name == "sample-oblique":
        files = _ct_series(name)[:3]
        orientation = ["LP", "PRH"]  # rows along (0.94, 0.34, 0), columns (-0.34, 0.93, 0.17)
    else:
        files = sorted(shared_file("dcmqi_data", "data", "segmentations", "23x38x3", "image")
                       .glob("*.dcm"))
        orientation = ["L", "P"]
    source, volume = load_series(files)
    labels = np.zeros(volume.shape, dtype=np.uint8)
    labels[3:12, 5:20, :] = 1
    rgb = overlay_rgb(volume[None], labels, volume.astype(np.float32), LABELS)
    assert rgb.shape == (3,) + volume.shape and rgb.dtype == np.uint8
    paths = write_dicom_sc(rgb, source, tmp_path / "sc", *MODEL)
    assert len(paths) == 3
    series = set()
    for k, path in enumerate(paths):
        src = source.datasets[k]
        ds = _check_sc(path, src, None)
        series.add(ds.SeriesInstanceUID)
        assert ds.FrameOfReferenceUID == src.FrameOfReferenceUID
        assert [float(v) for v in ds.ImagePositionPatient] == \
            [float(v) for v in src.ImagePositionPatient]
        assert [float(v) for v in ds.ImageOrientationPatient] == \
            [float(v) for v in src.ImageOrientationPatient]
        assert [float(v) for v in ds.PixelSpacing] == [float(v) for v in src.PixelSpacing]
        assert list(ds.PatientOrientation) == orientation
        assert (ds.Rows, ds.Columns) == (src.Rows, src.Columns)
        assert np.array_equal(ds.pixel_array, np.transpose(rgb[..., k], (2, 1, 0)))
        assert int(ds.InstanceNumber) == k + 1
    assert len(series) == 1


@needs_shared
def test_sc_of_multiframe_references_frames(tmp_path):
    source, volume = load_multiframe(
        shared_file("dcmqi_data", "data", "segmentations", "23x38x3", "multiframe", "mf.dcm"))
    labels = np.zeros(volume.shape[1:], dtype=np.uint8)
    labels[3:9, 5:12, :] = 1
    paths = write_dicom_sc(overlay_rgb(volume, labels, None, LABELS), source, tmp_path, *MODEL)
    assert len(paths) == 3
    for k, path in enumerate(paths):
        frame = source.frame_numbers[k]
        ds = _check_sc(path, source.first, frame)
        assert np.allclose([float(v) for v in ds.ImagePositionPatient],
                           frame_position(source.first, frame))
        assert ds.FrameOfReferenceUID == source.first.FrameOfReferenceUID


def test_sc_of_ultrasound_frames_has_no_geometry(tmp_path):
    source, volume = load_multiframe(pydicom_file("examples_ybr_color.dcm"))
    sub = DicomSource(source.datasets, source.paths, source.frame_numbers[3:5])
    rgb = overlay_rgb(volume[..., 3:5], np.zeros(volume.shape[1:3] + (2,), np.uint8), None)
    paths = write_dicom_sc(rgb, sub, tmp_path, *MODEL)
    for k, path in enumerate(paths):
        ds = _check_sc(path, source.first, sub.frame_numbers[k])
        assert "FrameOfReferenceUID" not in ds and "ImagePositionPatient" not in ds


def test_photo_goes_through_seg_and_sc(tmp_path):
    rng = np.random.default_rng(1)
    picture = rng.integers(0, 256, size=(3, 48, 30), dtype=np.uint8)  # 48 columns, 30 rows
    source = create_photo_study(picture, tmp_path / "photo.dcm", source_name="lesion.jpg")
    assert_dciodvfy_clean(source.paths[0])
    photo = pydicom.dcmread(source.paths[0])
    assert photo.PatientName == PLACEHOLDER_PATIENT_NAME
    assert photo.PatientID == PLACEHOLDER_PATIENT_ID
    assert "placeholder" in photo.PatientComments.lower()
    assert "FrameOfReferenceUID" not in photo
    assert (photo.Rows, photo.Columns) == (30, 48)
    assert np.array_equal(photo.pixel_array, np.transpose(picture, (2, 1, 0)))
    assert "PixelData" not in source.first and source.frame_numbers is None

    labels = np.zeros((48, 30), dtype=np.uint8)
    labels[10:25, 5:12] = 1
    seg_path = write_dicom_seg(labels, source, LABELS, *MODEL, tmp_path / "seg.dcm")
    assert_dciodvfy_clean(seg_path)
    seg = _read_seg(seg_path)
    assert seg.StudyInstanceUID == photo.StudyInstanceUID and seg.PatientID == photo.PatientID
    assert {u[2] for u in seg.get_source_image_uids()} == {photo.SOPInstanceUID}
    assert np.array_equal(_seg_labels_by_instance(seg, source)[..., 0], labels)

    (sc_path,) = write_dicom_sc(overlay_rgb(picture, labels, None, LABELS), source,
                                tmp_path / "sc", *MODEL)
    sc = _check_sc(sc_path, photo, None)
    assert "FrameOfReferenceUID" not in sc
    assert sc.SeriesInstanceUID not in (photo.SeriesInstanceUID, seg.SeriesInstanceUID)


def test_sc_without_source_gets_a_placeholder_study(tmp_path):
    rgb = np.zeros((3, 8, 6), dtype=np.uint8)
    (path,) = write_dicom_sc(rgb, None, tmp_path, *MODEL)
    assert_dciodvfy_clean(path)
    ds = pydicom.dcmread(path)
    assert ds.PatientID == PLACEHOLDER_PATIENT_ID and "SourceImageSequence" not in ds
    with pytest.raises(InputError):
        write_dicom_sc(np.zeros((3, 8, 6), np.float32), None, tmp_path, *MODEL)


# ---------------------------------------------------------------------------------------------
# PNG preview and overlay
# ---------------------------------------------------------------------------------------------

def test_preview_png_is_rows_by_columns_and_contour_is_on_the_mask(tmp_path):
    cols, rows, gap = 40, 24, 4
    image = np.tile(np.linspace(0, 1000, cols, dtype=np.float32)[:, None], (1, rows))[None]
    labels = np.zeros((cols, rows), dtype=np.uint8)
    labels[25:35, 3:9] = 1  # i (column) 25..34, j (row) 3..8
    saliency = np.zeros((cols, rows), dtype=np.float32)
    saliency[5, 20] = 1.0
    path = write_preview_png(image, labels, saliency, tmp_path / "p.png", LABELS, gap=gap)
    pic = np.asarray(Image.open(path).convert("RGB"))
    assert pic.shape == (rows, 3 * cols + 2 * gap, 3)
    panel = [pic[:, n * (cols + gap): n * (cols + gap) + cols] for n in range(3)]
    red = np.array([255, 0, 0])
    assert np.array_equal(panel[1][3, 25], red)  # corner of the mask: row 3, column 25
    assert np.array_equal(panel[1][8, 34], red)
    assert not np.array_equal(panel[1][5, 28], red)  # inside, not on the contour
    assert np.array_equal(panel[1][5, 28], panel[0][5, 28])
    assert not np.array_equal(panel[1][3, 5], red)  # mask columns are 25..34, not 5
    # the picture brightens left to right (columns), as the input does along i
    assert panel[0][10, 39, 0] > panel[0][10, 0, 0]
    # the heat map is hot where the saliency is: row 20, column 5
    hot = panel[2][20, 5].astype(int)
    assert hot[0] > hot[2] and not np.array_equal(panel[2][20, 5], panel[0][20, 5])
    assert np.array_equal(panel[2][2, 30], panel[0][2, 30])
    # no saliency: two panels
    path = write_preview_png(image, labels, None, tmp_path / "q.png", LABELS, gap=gap)
    assert np.asarray(Image.open(path)).shape[:2] == (rows, 2 * cols + gap)


def test_preview_of_a_large_photo_is_drawn_at_most_max_side_wide(tmp_path):
    cols, rows = 2592, 1944  # a 5-megapixel dermoscopy photo
    rgb = np.zeros((3, cols, rows), dtype=np.uint8)
    rgb[0] = np.linspace(0, 255, cols, dtype=np.uint8)[:, None]  # red grows along columns
    labels = np.zeros((cols, rows), dtype=np.uint8)
    labels[1296:1800, 400:900] = 1
    saliency = np.zeros((cols, rows), dtype=np.float32)
    saliency[100:300, 1500:1700] = 1.0
    path = write_preview_png(rgb, labels, saliency, tmp_path / "big.png", LABELS, gap=4)
    pic = np.asarray(Image.open(path).convert("RGB"))
    assert pic.shape == (768, 3 * 1024 + 8, 3)
    scale = 1024 / cols
    mask_panel = pic[:, 1028:2052]
    red = np.array([255, 0, 0])
    # the contour is where the mask is, scaled: columns 1296..1799 -> 512..710, rows 400..899
    j0, i0 = round(400 * scale), round(1296 * scale)
    assert np.array_equal(mask_panel[j0 + 20, i0], red)
    assert not np.array_equal(mask_panel[j0 + 20, i0 - 6], red)
    heat, plain = pic[:, 2056:].astype(int), pic[:, :1024].astype(int)
    hot, cold = (round(1600 * scale), round(200 * scale)), (round(1600 * scale), round(600 * scale))
    assert abs(heat[hot] - plain[hot]).sum() > 30  # the heat map is where the saliency is
    assert np.array_equal(heat[cold], plain[cold])
    assert pic[400, 1000, 0] > pic[400, 10, 0]  # the picture is not transposed
    full = write_preview_png(rgb[:, :300, :200], labels[:300, :200], None, tmp_path / "s.png",
                             LABELS, max_side=None)
    assert np.asarray(Image.open(full)).shape[:2] == (200, 604)


def test_overlay_of_volume_and_rgb_picture():
    rgb = np.full((3, 10, 7), 100, dtype=np.uint8)
    labels = np.zeros((10, 7), dtype=np.uint8)
    labels[2:6, 2:5] = 2
    out = overlay_rgb(rgb, labels, None, {2: (0, 0, 255)})
    assert out.shape == (3, 10, 7) and out.dtype == np.uint8
    assert tuple(out[:, 2, 2]) == (0, 0, 255) and tuple(out[:, 3, 3]) == (100, 100, 100)
    volume = np.random.default_rng(2).normal(size=(1, 10, 7, 3))
    out = overlay_rgb(volume, np.zeros((10, 7, 3), np.uint8), np.ones((10, 7, 3)), LABELS)
    assert out.shape == (3, 10, 7, 3)
    with pytest.raises(InputError):
        overlay_rgb(volume, np.zeros((10, 7), np.uint8), None)


def test_preview_of_a_volume_shows_the_slice_with_most_mask(tmp_path):
    volume = np.zeros((1, 12, 9, 4), dtype=np.float32)
    volume[..., 2] = 100.0  # only slice 2 is bright
    labels = np.zeros((12, 9, 4), dtype=np.uint8)
    labels[2:6, 2:6, 2] = 1
    labels[0, 0, 1] = 1
    path = write_preview_png(volume, labels, None, tmp_path / "v.png", LABELS, gap=0)
    pic = np.asarray(Image.open(path).convert("RGB"))
    assert pic.shape == (9, 24, 3)
    assert pic[0, 0].sum() > 0  # slice 2 (bright), not slice 1
    assert tuple(pic[2, 12 + 2]) == (255, 0, 0)


# ---------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------

def test_report_json_converts_numpy_and_sorts_keys(tmp_path):
    report = {"z": np.float32(1.5), "a": {"n": np.int64(3), "arr": np.arange(3),
                                          "bad": float("nan"), 2: Path("/x")},
              "flag": np.bool_(True)}
    path = write_report_json(report, tmp_path / "r.json")
    text = path.read_text()
    assert json.loads(text) == {"a": {"2": "/x", "arr": [0, 1, 2], "bad": None, "n": 3},
                                "flag": True, "z": 1.5}
    assert text.index('"a"') < text.index('"flag"') < text.index('"z"')


def test_label_statistics_in_mm_and_pixels():
    labels = np.zeros((10, 8), dtype=np.uint8)
    labels[:2, :3] = 1  # 6 pixels
    stats = label_statistics(labels, (0.5, 2.0), LABELS, True)
    assert stats == [{"value": 1, "name": "lesion", "voxel_count": 6, "area_mm2": 6.0},
                     {"value": 2, "name": "liver", "voxel_count": 0, "area_mm2": 0.0}]
    stats = label_statistics(labels, None, LABELS, False)
    assert stats[0]["area_pixels"] == 6
    volume = np.zeros((4, 4, 4), dtype=np.uint8)
    volume[0, 0, :] = 2
    volume[1, 1, 1] = 9
    stats = label_statistics(volume, (1.0, 2.0, 5.0), LABELS, True)
    assert stats[1] == {"value": 2, "name": "liver", "voxel_count": 4, "volume_mm3": 40.0,
                        "volume_ml": 0.04}
    assert stats[2]["name"] == "label_9"
    with pytest.raises(MedxaiError):
        label_statistics(volume, (1.0, 2.0), LABELS, True)


def test_shared_source_headers_prepare_once_and_hand_out_copies(tmp_path, monkeypatch):
    from medxai.io.writers import _common
    from medxai.io.writers._common import shared_source_headers, source_proxy

    picture = np.zeros((3, 8, 6), np.uint8)
    source = create_photo_study(picture, tmp_path / "photo.dcm")
    ds = source.first
    del ds.PatientSex  # a type 2 attribute the proxy fills in
    prepared = []
    real = _common._full_proxy
    monkeypatch.setattr(_common, "_full_proxy", lambda d, w: prepared.append(d) or real(d, w))
    with shared_source_headers():
        first, second = source_proxy(ds), source_proxy(ds)
        first.PatientName = "Changed^By^A^Writer"
        third = source_proxy(ds)
    outside = source_proxy(ds)
    assert prepared == [ds, ds]  # once inside the block, once outside it
    assert first is not second and second == third == outside
    assert str(third.PatientName) != "Changed^By^A^Writer" and third.PatientSex == ""
    assert "PatientSex" not in ds  # the source itself untouched
