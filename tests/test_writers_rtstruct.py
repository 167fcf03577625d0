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
