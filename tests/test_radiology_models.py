"""The bundled radiology models on real data: chest X-ray lungs and hippocampus MR.

Each model runs on a handful of its validation cases (val is for selection; these are smoke
thresholds well under the model card's means) and on a real DICOM input through
``segment_path`` without ``--model``, so that the model is chosen by the input.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from medxai.models.registry import BUNDLED_MODELS
from tests.conftest import shared_path

LUNGS, HIPPO = "cxr-lungs-unet", "hippocampus-unet"


def _require(name: str) -> None:
    if not BUNDLED_MODELS[name].available:
        pytest.skip(f"bundled model {name} is not installed in this checkout")


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    inter = float(np.logical_and(a, b).sum())
    total = float(a.sum() + b.sum())
    return 1.0 if total == 0 else 2 * inter / total


def test_lungs_model_on_val_pictures() -> None:
    _require(LUNGS)
    from medxai.inference import predict
    from medxai.io.readers import read_image
    from medxai.models.registry import load_model

    bundle = load_model(LUNGS)
    val = shared_path("cxr_lungs", "val")
    images = sorted(p for p in val.glob("CHNCXR_*_0.png"))[:4]
    scores = []
    for img_path in images:
        image = read_image(img_path)
        truth = read_image(img_path.with_name(img_path.stem + "_mask.png")).numpy()[0] > 127
        pred = predict(bundle, image, device="cpu").labels[0].numpy() == 1
        assert pred.shape == truth.shape
        scores.append(_dice(pred, truth))
    # the first four val images (by name) give 0.84, 0.93, 0.97, 0.97 with model 1.0.0
    assert min(scores) > 0.8, scores
    assert float(np.mean(scores)) > 0.92, scores


def test_hippocampus_model_on_val_volumes() -> None:
    _require(HIPPO)
    from medxai.inference import predict
    from medxai.io.readers import read_image
    from medxai.models.registry import load_model

    root = shared_path("hippocampus")
    cases = json.loads((root / "dataset.json").read_text())["validation"][:3]
    bundle = load_model(HIPPO)
    scores = []
    for case in cases:
        image = read_image(root / case["image"])
        truth = read_image(root / case["label"]).numpy()[0]
        pred = predict(bundle, image, device="cpu").labels[0].numpy()
        assert pred.shape == truth.shape
        scores.append(np.mean([_dice(pred == v, truth == v) for v in (1, 2)]))
    assert float(np.mean(scores)) > 0.8, scores


def test_hippocampus_crop_series_end_to_end(tmp_path: Path) -> None:
    """The DICOM crop series: chosen by its fit rules, labels and saliency on the series grid,
    volumes in mm3, and a SEG that dcmqi reads back onto the same voxels."""
    _require(HIPPO)
    import nibabel as nib

    from medxai.io.readers import load_image
    from medxai.pipeline import SegmentOptions, segment_path
    from tests.test_writers import _dcmqi_labels

    series = shared_path("hippocampus", "dicom_study1", "13_HCropVolume")
    res = segment_path(series, None, tmp_path / "out",
                       SegmentOptions(formats=["nifti", "dicom-seg", "json"], explain="gradcam"))
    report = res.report
    assert report["model"]["name"] == HIPPO
    assert report["model"]["choice"]["chosen"] == HIPPO
    assert set(report["model"]["choice"]["refused"]) >= {"isic2018-lesion-unet"}
    loaded = load_image(series)
    lab_img = nib.load(res.output_dir / "labels.nii.gz")
    assert np.allclose(lab_img.affine, loaded.image.affine, atol=1e-4)
    labels = np.asarray(lab_img.dataobj)
    assert labels.shape == tuple(loaded.image.shape[1:])
    stats = {s["name"]: s for s in report["labels"]}
    for name, value in (("anterior", 1), ("posterior", 2)):
        count = int((labels == value).sum())
        assert count > 200, f"{name}: only {count} voxels"
        assert stats[name]["voxel_count"] == count
        assert stats[name]["volume_mm3"] == pytest.approx(count * 1.0, rel=1e-6)  # 1 mm voxels
    sal = list(res.output_dir.glob("saliency_*.nii.gz"))
    assert len(sal) == 2
    for path in sal:
        img = nib.load(path)
        assert img.shape == labels.shape and np.allclose(img.affine, lab_img.affine, atol=1e-4)
    seg = res.output_dir / "seg.dcm"
    from_dcmqi, _k0 = _dcmqi_labels(seg, loaded.dicom, labels.shape, tmp_path / "dcmqi")
    assert np.array_equal(from_dcmqi > 0, labels > 0)


def test_chest_cr_with_zero_pixel_spacing_gives_valid_dicom(tmp_path: Path) -> None:
    """pydicom's RG1_UNCR chest CR carries PixelSpacing 0\\0: the lungs model is chosen, areas
    stay in pixels, and no derived object copies the invalid spacing (dciodvfy, no Error)."""
    _require(LUNGS)
    from pydicom.data import get_testdata_file

    from medxai.pipeline import segment_path
    from tests.helpers_dicom import assert_dciodvfy_clean

    res = segment_path(get_testdata_file("RG1_UNCR.dcm"), None, tmp_path)
    assert res.report["model"]["choice"]["chosen"] == LUNGS
    assert "area_pixels" in res.report["labels"][0]
    written = sorted(res.output_dir.rglob("*.dcm"))
    assert {p.name for p in written} >= {"seg.dcm", "pm_saliency_lungs.dcm", "sr.dcm"}
    for path in written:
        assert_dciodvfy_clean(path)
