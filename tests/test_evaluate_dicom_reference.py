"""`medxai evaluate` against a DICOM SEG or RTSTRUCT reference (rasterised onto the series it
was drawn on): the reference's own label map scores Dice 1.0, a perturbed one the Dice computed
here from the arrays, independently of the rasteriser."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from click.testing import CliRunner

from medxai.io.readers import load_image
from tests.conftest import shared_path

warnings.filterwarnings("ignore", category=UserWarning, module="pydicom")


def _evaluate(*args: str) -> tuple[int, dict]:
    from medxai.cli.main import cli

    res = CliRunner().invoke(cli, ["evaluate", "--json", *args])
    if res.exit_code != 0:
        return res.exit_code, {"output": res.output}
    return 0, json.loads(res.output[res.output.index("{"):])


def _dice(p: np.ndarray, t: np.ndarray) -> float:
    p, t = p.astype(bool), t.astype(bool)
    return 2 * np.count_nonzero(p & t) / (np.count_nonzero(p) + np.count_nonzero(t))


def _save(labels: np.ndarray, affine: np.ndarray, path: Path) -> Path:
    nib.save(nib.Nifti1Image(labels.astype(np.uint8), affine), str(path))
    return path


def _segs() -> Path:
    return shared_path("dicom", "dcmqi_data", "data", "segmentations")


CASES = [  # (series, SEG, dcmqi's label map of it)
    ("ct-3slice", "liver.dcm", "liver_seg.nrrd"),
    ("23x38x3/image", "23x38x3/seg/label.seg", "23x38x3/nrrd/label.nrrd"),
    ("24x38x3/image", "24x38x3/seg/label.seg", "24x38x3/nrrd/label.nrrd"),
]


@pytest.mark.parametrize("series,seg,nrrd", CASES)
def test_dcmqi_seg_against_its_own_label_map_is_dice_1(series: str, seg: str, nrrd: str) -> None:
    d = _segs()
    code, out = _evaluate(str(d / nrrd), str(d / seg), "--series", str(d / series))
    assert code == 0, out
    assert out["reference"]["kind"] == "SEG" and out["n_images"] == 1
    number = str(pydicom.dcmread(str(d / seg), stop_before_pixels=True)
                 .SegmentSequence[0].SegmentNumber)
    assert out["summary"][number]["dice"]["mean"] == 1.0
    assert out["summary"][number]["hd95"]["mean"] == 0.0


def test_dcmqi_seg_against_an_eroded_map_gives_the_known_dice(tmp_path: Path) -> None:
    from scipy import ndimage

    d = _segs()
    truth = load_image(d / "liver_seg.nrrd").image
    t = truth[0].numpy() > 0
    # erode in-plane by one voxel (4-neighbourhood), slice by slice
    cross = ndimage.generate_binary_structure(2, 1)
    eroded = np.stack([ndimage.binary_erosion(t[..., k], cross) for k in range(t.shape[2])], -1)
    removed = np.count_nonzero(t) - np.count_nonzero(eroded)
    assert removed > 0 and np.all(eroded <= t)
    expected = 2 * np.count_nonzero(eroded) / (np.count_nonzero(eroded) + np.count_nonzero(t))
    pred = _save(eroded, truth.affine.numpy(), tmp_path / "eroded.nii.gz")
    code, out = _evaluate(str(pred), str(d / "liver.dcm"), "--series", str(d / "ct-3slice"))
    assert code == 0, out
    # MONAI's Dice: exact counts, one float32 division (within 2e-7 of the exact ratio)
    assert out["summary"]["1"]["dice"]["mean"] == pytest.approx(expected, abs=2e-7)
    assert out["summary"]["1"]["sensitivity"]["mean"] == pytest.approx(
        np.count_nonzero(eroded) / np.count_nonzero(t), abs=1e-12)


def test_a_seg_scored_against_itself_and_the_reference_option(tmp_path: Path) -> None:
    d = _segs()
    code, out = _evaluate(str(d / "liver.dcm"), "--reference", str(d / "liver.dcm"),
                          "--series", str(d / "ct-3slice"))
    assert code == 0, out
    assert out["summary"]["1"]["dice"]["mean"] == 1.0


@pytest.fixture(scope="module")
def rt_series(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """rt-utils' two CT slices (a series folder) and the RTSTRUCT drawn on them."""
    d = shared_path("dicom", "rt-utils_testdata", "tests", "mock_data")
    series = tmp_path_factory.mktemp("rt_series")
    for name in ("ct_1.dcm", "ct_2.dcm"):
        shutil.copy(d / name, series / name)
    return series, d / "rt.dcm"


def _contour_mask(series: Path, rt: Path) -> tuple[np.ndarray, np.ndarray]:
    """The RTSTRUCT's ROI 1 filled with skimage's polygon rule (voxel centres inside), on the
    series grid (I, J, K), and the series' RAS affine."""
    draw = pytest.importorskip("skimage.draw")
    from medxai.io.geometry import ras_to_lps_affine

    img = load_image(series).image
    affine = img.affine.numpy()
    inv = np.linalg.inv(ras_to_lps_affine(affine))
    mask = np.zeros(tuple(img.shape[1:]), dtype=bool)
    for c in pydicom.dcmread(str(rt)).ROIContourSequence[0].ContourSequence:
        pts = np.asarray([float(v) for v in c.ContourData]).reshape(-1, 3)
        idx = (inv @ np.c_[pts, np.ones(len(pts))].T).T
        k = round(float(idx[0, 2]))
        ii, jj = draw.polygon(idx[:, 0], idx[:, 1], shape=mask.shape[:2])
        layer = np.zeros(mask.shape[:2], dtype=bool)
        layer[ii, jj] = True
        mask[:, :, k] ^= layer
    return mask, affine


def test_rtstruct_against_its_own_contours_is_dice_1(rt_series, tmp_path: Path) -> None:
    series, rt = rt_series
    mask, affine = _contour_mask(series, rt)
    assert np.count_nonzero(mask) > 0
    pred = _save(mask, affine, tmp_path / "roi.nii.gz")
    code, out = _evaluate(str(pred), str(rt), "--series", str(series))
    assert code == 0, out
    assert out["reference"]["kind"] == "RTSTRUCT" and out["reference"]["names"] == {"1": "ROI-1"}
    assert out["summary"]["1"]["dice"]["mean"] == 1.0


def test_rtstruct_against_a_map_less_one_column_gives_the_known_dice(rt_series,
                                                                    tmp_path: Path) -> None:
    series, rt = rt_series
    mask, affine = _contour_mask(series, rt)
    # drop the first column (i) of the ROI: a known number of voxels
    i0 = int(np.argmax(mask.any(axis=(1, 2))))
    n_all, n_col = np.count_nonzero(mask), np.count_nonzero(mask[i0])
    assert 0 < n_col < n_all
    cut = mask.copy()
    cut[i0] = False
    pred = _save(cut, affine, tmp_path / "cut.nii.gz")
    code, out = _evaluate(str(pred), str(rt), "--series", str(series))
    assert code == 0, out
    expected = 2 * (n_all - n_col) / (2 * n_all - n_col)
    # MONAI's Dice: exact counts, one float32 division (within 2e-7 of the exact ratio)
    assert out["summary"]["1"]["dice"]["mean"] == pytest.approx(expected, abs=2e-7)
    assert _dice(cut, mask) == pytest.approx(expected, abs=1e-12)


def test_refusals_say_what_is_wrong(rt_series, tmp_path: Path) -> None:
    d = _segs()
    # no --series: the reference needs its series' grid
    code, out = _evaluate(str(d / "liver_seg.nrrd"), str(d / "liver.dcm"))
    assert code == 2 and "--series" in out["output"]
    # a label map of another grid
    series, rt = rt_series
    code, out = _evaluate(str(d / "liver_seg.nrrd"), str(rt), "--series", str(series))
    assert code == 2 and "not on the grid" in out["output"]
    # the series of another Frame of Reference
    code, out = _evaluate(str(d / "liver.dcm"), str(d / "liver.dcm"), "--series", str(series))
    assert code == 2 and "Frame of Reference" in out["output"]
    # --reference that is no segmentation
    sr = shared_path("dicom", "dcmqi_data", "data", "sr-example", "sr.dcm")
    code, out = _evaluate(str(d / "liver_seg.nrrd"), "--reference", str(sr), "--series",
                          str(d / "ct-3slice"))
    assert code == 2 and "not a DICOM SEG or RTSTRUCT" in out["output"]


def test_a_model_against_a_seg_reference(ct_bundle, tmp_path: Path) -> None:
    from medxai.evaluation.metrics import binary_metrics
    from medxai.evaluation.segmentation import evaluate_model_against_reference
    from medxai.inference import predict

    d = _segs()
    res = evaluate_model_against_reference(ct_bundle, d / "ct-3slice", d / "liver.dcm",
                                           device="cpu")
    # the same prediction scored here against dcmqi's label map of the SEG
    ct = load_image(d / "ct-3slice")
    pred = predict(ct_bundle, ct.image, device="cpu").labels[0].numpy()
    truth = load_image(d / "liver_seg.nrrd").image[0].numpy() > 0
    expected = binary_metrics(pred == 1, truth, ct.image.meta["spacing"])
    (row,) = res.rows
    assert row["label"] == 1 and row["dice"] == pytest.approx(expected["dice"], abs=1e-12)


def test_segment_on_a_seg_or_parametric_map_says_what_it_is_and_what_to_give(
        tmp_path: Path) -> None:
    from medxai.cli.main import cli
    from medxai.io.writers.dicom_pm import write_dicom_pm

    d = _segs()
    ct = load_image(d / "ct-3slice")
    pm = write_dicom_pm(np.random.default_rng(0).random(tuple(ct.image.shape[1:])), ct.dicom,
                        tmp_path / "pm.dcm", method="gradcam", model_name="m", model_version="0")
    for path, what, instead in (
        (d / "liver.dcm", "Segmentation Storage object (1 segment(s): Liver",
         "medxai evaluate --model M SERIES --reference THIS_SEG"),
        (pm, "Parametric Map Storage object", "give the image series it was computed from"),
    ):
        res = CliRunner().invoke(cli, ["segment", "-o", str(tmp_path / "o"), str(path)])
        assert res.exit_code == 2, res.output
        assert what in res.output and instead in res.output, res.output
