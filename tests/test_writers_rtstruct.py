"""RT Structure Set writer: rt-utils (a reader no one here wrote) rasterises the contours back
onto the series with Dice >= 0.95 per label; dciodvfy finds no error."""

from __future__ import annotations

import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from medxai.errors import InputError, UnsupportedInputError
from medxai.io.geometry import dicom_affine_lps
from medxai.io.writers.dicom_rtstruct import write_dicom_rtstruct
from tests.helpers_dicom import assert_dciodvfy_clean, load_series, load_single, shared_file

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _labels_on_series(nifti: Path, source) -> np.ndarray:
    """The NIfTI label map resampled (nearest, by its affine) onto the series grid (I, J, K)."""
    img = nib.load(nifti)
    first, second = source.datasets[0], source.datasets[1]
    step = np.subtract([float(v) for v in second.ImagePositionPatient],
                       [float(v) for v in first.ImagePositionPatient])
    lps = dicom_affine_lps([float(v) for v in first.ImageOrientationPatient],
                           [float(v) for v in first.ImagePositionPatient],
                           [float(v) for v in first.PixelSpacing], step)
    index = np.linalg.inv(img.affine) @ np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
    shape = (int(first.Columns), int(first.Rows), len(source.datasets))
    grid = np.stack([g.ravel() for g in np.meshgrid(*[np.arange(n) for n in shape],
                                                    indexing="ij")])
    ijk = np.rint(index[:3, :3] @ grid + index[:3, 3:]).astype(int)
    assert (ijk >= 0).all() and all((ijk[a] < img.shape[a]).all() for a in range(3))
    data = np.asarray(img.dataobj)
    return data[ijk[0], ijk[1], ijk[2]].reshape(shape).astype(np.uint8)


def test_rtstruct_of_totalsegmentator_labels_is_read_back_by_rt_utils(tmp_path):
    rt_utils = pytest.importorskip("rt_utils")
    ref = shared_file("totalsegmentator_tests", "tests", "reference_files")
    files = sorted((ref / "example_ct_dicom").iterdir())[:6]  # 6 of its 20 slices: fast enough
    source, _ = load_series(files)
    # the anonymised export has empty Study/Series/SOP Instance UIDs; restore them on disk too
    study, series = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
    folder = tmp_path / "series"
    folder.mkdir()
    for k, (ds, path) in enumerate(zip(source.datasets, source.paths)):
        full = pydicom.dcmread(path)
        for target in (ds, full):
            target.StudyInstanceUID, target.SeriesInstanceUID = study, series
            target.SOPInstanceUID = full.file_meta.MediaStorageSOPInstanceUID
        full.save_as(folder / f"{k:03d}.dcm")
    labels = _labels_on_series(ref / "example_seg_dicom.nii.gz", source)
    values = [int(v) for v in np.unique(labels) if v]
    assert len(values) > 10
    info = [{"value": v, "name": f"structure_{v}"} for v in values]
    path = write_dicom_rtstruct(labels, source, info, tmp_path / "rtstruct.dcm",
                                model_name="TotalSegmentator", model_version="reference")
    assert_dciodvfy_clean(path)
    ds = pydicom.dcmread(path)
    assert ds.Modality == "RTSTRUCT" and ds.StudyInstanceUID == study
    assert ds.ReferencedFrameOfReferenceSequence[0].FrameOfReferenceUID == \
        source.first.FrameOfReferenceUID
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rt = rt_utils.RTStructBuilder.create_from(str(folder), str(path))
    assert sorted(rt.get_roi_names()) == sorted(e["name"] for e in info)
    # rt-utils orders its mask's slices as it sorts the series; map them by SOP Instance UID
    uids = [d.SOPInstanceUID for d in source.datasets]
    order = [uids.index(s.SOPInstanceUID) for s in rt.series_data]
    dice = {}
    for entry in info:
        mask = np.zeros(labels.shape, bool)
        mask[..., order] = np.transpose(rt.get_roi_mask_by_name(entry["name"]), (1, 0, 2))
        truth = labels == entry["value"]
        dice[entry["value"]] = 2 * (mask & truth).sum() / (mask.sum() + truth.sum())
    assert min(dice.values()) >= 0.95, {v: round(d, 3) for v, d in dice.items() if d < 0.95}


def test_rtstruct_refuses_sources_without_patient_geometry(tmp_path):
    source, image = load_single(shared_file("highdicom_test_files", "dx_image.dcm"))
    with pytest.raises(UnsupportedInputError, match="patient geometry"):
        write_dicom_rtstruct(np.zeros(image.shape[1:] + (1,), np.uint8), source,
                             [{"value": 1, "name": "lungs"}], tmp_path / "rt.dcm",
                             model_name="m", model_version="1")
    folder = shared_file("dcmqi_data", "data", "segmentations", "ct-3slice")
    source, volume = load_series(sorted(folder.glob("*.dcm")))
    with pytest.raises(InputError, match="shape"):
        write_dicom_rtstruct(np.zeros((3, 3, 3), np.uint8), source, [{"value": 1, "name": "x"}],
                             tmp_path / "rt.dcm", model_name="m", model_version="1")
    labels = np.zeros(volume.shape, np.uint8)
    labels[100:200, 150:300, 1] = 2
    with pytest.raises(InputError, match="not in label_info"):
        write_dicom_rtstruct(labels, source, [{"value": 1, "name": "x"}], tmp_path / "rt.dcm",
                             model_name="m", model_version="1")


def _rasterise_from_patient_coordinates(ds, source) -> dict[str, np.ndarray]:
    """Each ROI's contours, projected from patient coordinates (LPS mm) onto the plane of the
    slice each one references and filled there (``skimage.draw.polygon2mask``, pixel centres),
    combined by XOR (holes): ``{ROI name: mask (I, J, K)}``. Independent of medxai's writer
    and of the reader's idea of rows and columns: it uses only the series' own geometry."""
    from skimage.draw import polygon2mask

    index = {d.SOPInstanceUID: k for k, d in enumerate(source.datasets)}
    first = source.first
    shape = (int(first.Columns), int(first.Rows), len(source.datasets))
    names = {int(r.ROINumber): str(r.ROIName) for r in ds.StructureSetROISequence}
    out = {}
    for roi in ds.ROIContourSequence:
        mask = np.zeros(shape, bool)
        for contour in roi.ContourSequence:
            assert contour.ContourGeometricType == "CLOSED_PLANAR"
            k = index[contour.ContourImageSequence[0].ReferencedSOPInstanceUID]
            img = source.datasets[k]
            iop = np.asarray([float(v) for v in img.ImageOrientationPatient])
            ipp = np.asarray([float(v) for v in img.ImagePositionPatient])
            row_spacing, col_spacing = (float(v) for v in img.PixelSpacing)
            points = np.asarray([float(v) for v in contour.ContourData]).reshape(-1, 3) - ipp
            assert np.abs(points @ np.cross(iop[:3], iop[3:])).max() < 1e-3  # on the slice
            ij = np.column_stack([points @ iop[:3] / col_spacing, points @ iop[3:] / row_spacing])
            mask[:, :, k] ^= polygon2mask(shape[:2], ij)
        out[names[int(roi.ReferencedROINumber)]] = mask
    return out


def test_rtstruct_of_a_non_square_series_rasterised_from_patient_coordinates(tmp_path):
    """The hippocampus crop series: 51 rows x 35 columns, so rows and columns cannot be mixed
    up unnoticed (rt-utils 1.2.7 does: its masks of this series are transposed, Dice 0.44 at
    best; see docs/viewers.md). Filled from their patient coordinates, the contours give back
    the label map exactly (Dice 1.0), holes and separate components included."""
    from tests.conftest import shared_path

    folder = shared_path("hippocampus", "dicom_study1", "13_HCropVolume")
    source, volume = load_series(sorted(folder.glob("*.dcm")))
    assert volume.shape == (35, 51, 32)
    i, j, k = np.meshgrid(*[np.arange(n) for n in volume.shape], indexing="ij")
    labels = np.zeros(volume.shape, np.uint8)
    labels[((i - 17) / 9.0) ** 2 + ((j - 20) / 12.0) ** 2 + ((k - 12) / 6.0) ** 2 <= 1] = 1
    labels[((i - 15) / 6.0) ** 2 + ((j - 38) / 8.0) ** 2 + ((k - 20) / 7.0) ** 2 <= 1] = 2
    labels[15:19, 18:22, 12] = 0  # a hole
    labels[28:32, 2:5, 12] = 1  # a second component on the same slice
    info = [{"value": 1, "name": "anterior"}, {"value": 2, "name": "posterior"}]
    path = write_dicom_rtstruct(labels, source, info, tmp_path / "rtstruct.dcm",
                                model_name="test-unet", model_version="1.2.3")
    assert_dciodvfy_clean(path)
    masks = _rasterise_from_patient_coordinates(pydicom.dcmread(path), source)
    assert set(masks) == {"anterior", "posterior"}
    for entry in info:
        truth = labels == entry["value"]
        mask = masks[entry["name"]]
        dice = 2 * (mask & truth).sum() / (mask.sum() + truth.sum())
        assert dice == 1.0, (entry["name"], dice)
