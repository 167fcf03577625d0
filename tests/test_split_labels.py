"""``--split-labels`` and ``--seg-type`` through the pipeline, on the multi-label bundled model
(hippocampus-unet: anterior, posterior) and real hippocampus MR crops (a NIfTI volume of the
Decathlon set and the DICOM crop series)."""

from __future__ import annotations

import warnings

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest

from medxai.errors import InputError
from medxai.pipeline import SegmentOptions, segment_path
from tests.conftest import shared_path
from tests.helpers_dicom import dciodvfy, dciodvfy_tool, dciodvfy_year

MODEL = "hippocampus-unet"


@pytest.fixture(scope="module")
def hippocampus():
    from medxai.models.registry import load_model

    return load_model(MODEL)


def test_split_labels_one_mask_per_label_on_the_input_grid(tmp_path, hippocampus):
    volume = shared_path("hippocampus", "imagesTr", "hippocampus_001.nii.gz")
    opts = SegmentOptions(explain=None, device="cpu", split_labels=True)
    result = segment_path(volume, hippocampus, tmp_path, opts)
    folder = result.output_dir
    labels_img = nib.load(folder / "labels.nii.gz")
    labels = np.asarray(labels_img.dataobj)
    source = nib.load(volume)
    assert labels.shape == source.shape and np.allclose(labels_img.affine, source.affine)
    names = {int(lab["value"]): lab["name"] for lab in hippocampus.labels if lab["value"]}
    assert len(names) == 2
    found = set()
    for value, name in names.items():
        path = folder / f"mask_{name}.nii.gz"
        assert path.name in result.files
        img = nib.load(path)
        assert img.get_data_dtype() == np.uint8
        assert np.array_equal(img.affine, labels_img.affine)
        mask = np.asarray(img.dataobj)
        assert np.array_equal(mask, (labels == value).astype(np.uint8))
        found.add(bool(mask.any()))
    assert found == {True}, "both hippocampus parts should be found on a training case"
    assert not any(
        f.startswith("mask_")
        for f in segment_path(
            volume, hippocampus, tmp_path / "plain", SegmentOptions(explain=None, device="cpu")
        ).files
    )


@pytest.mark.parametrize("seg_type", ["labelmap", "fractional"])
def test_seg_type_reaches_the_dicom_seg(tmp_path, hippocampus, seg_type):
    series = shared_path("hippocampus", "dicom_study1", "13_HCropVolume")
    opts = SegmentOptions(
        formats=["nifti", "dicom-seg", "json"], explain=None, device="cpu", seg_type=seg_type
    )
    result = segment_path(series, hippocampus, tmp_path, opts)
    path = result.output_dir / "seg.dcm"
    ds = pydicom.dcmread(path)
    assert ds.SegmentationType == seg_type.upper()
    tool = dciodvfy_tool()
    # a label map needs a dciodvfy of 2024 or later (see test_writers_seg_types.py)
    if tool and (seg_type == "fractional" or dciodvfy_year(tool) >= 2024):
        errors, _, _ = dciodvfy(path)
        assert not errors, "\n".join(errors)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        seg = hd.seg.segread(path)
    labels = np.asarray(nib.load(result.output_dir / "labels.nii.gz").dataobj)
    assert list(seg.segment_numbers) == [1, 2]  # (number_of_segments says 1 for LABELMAP)
    if seg_type == "labelmap":
        # the SEG's pixels, summed over the series, count what labels.nii.gz counts
        sources = [uid[2] for uid in seg.get_source_image_uids()]
        px = seg.get_pixels_by_source_instance(sources, combine_segments=True)
        for n in (1, 2):
            assert int((px == n).sum()) == int((labels == n).sum())
    with pytest.raises(InputError, match="unknown SEG type"):
        SegmentOptions(seg_type="bits")
