"""Derived objects as inputs: SEG and RTSTRUCT rasterised onto their series' grid (against
dcmqi's own NRRD label maps and rt-utils' masks), and `medxai info` on SEG/RTSTRUCT/PM/SR."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from click.testing import CliRunner

from medxai.io.dicom.derived import describe_derived, rasterise_reference
from medxai.io.readers import load_image
from tests.conftest import shared_path

warnings.filterwarnings("ignore", category=UserWarning, module="pydicom")


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    return float(2 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b)))


def _seg_dir() -> Path:
    return shared_path("dicom", "dcmqi_data", "data", "segmentations")


def _nrrd_on(grid: object, path: Path) -> np.ndarray:
    """A dcmqi NRRD label map, checked to share the series' grid, as (I, J, K)."""
    img = load_image(path).image
    np.testing.assert_allclose(img.affine.numpy(), grid.affine.numpy(), atol=1e-3)  # type: ignore[attr-defined]
    return img[0].numpy()


def test_seg_matches_dcmqi_label_map_dice_1() -> None:
    d = _seg_dir()
    ct = load_image(d / "ct-3slice")
    ref = rasterise_reference(d / "liver.dcm", ct)
    assert ref.names == {1: "Liver"} and not ref.warnings
    assert tuple(ref.labels.shape) == tuple(ct.image.shape)
    np.testing.assert_allclose(ref.labels.affine.numpy(), ct.image.affine.numpy())
    truth = _nrrd_on(ct.image, d / "liver_seg.nrrd")
    got = ref.labels[0].numpy()
    assert _dice(got == 1, truth > 0) == 1.0
    np.testing.assert_array_equal(got > 0, truth > 0)


def test_seg_dice_of_a_perturbed_map_is_the_known_value() -> None:
    d = _seg_dir()
    ct = load_image(d / "ct-3slice")
    got = rasterise_reference(d / "liver.dcm", ct).labels[0].numpy() > 0
    truth = _nrrd_on(ct.image, d / "liver_seg.nrrd") > 0
    perturbed = truth.copy()
    perturbed[:, :, 0] = False  # drop the first slice of the label map
    n_all, n_first = np.count_nonzero(truth), np.count_nonzero(truth[:, :, 0])
    expected = 2 * (n_all - n_first) / (2 * n_all - n_first)
    assert n_first > 0
    assert _dice(got, perturbed) == pytest.approx(expected, abs=1e-12)


def test_overlapping_segments_each_match_their_label_map() -> None:
    d = _seg_dir()
    ct = load_image(d / "ct-3slice")
    seg = pydicom.dcmread(str(d / "partial_overlaps.dcm"), stop_before_pixels=True)
    numbers = [int(s.SegmentNumber) for s in seg.SegmentSequence]
    ref = rasterise_reference(d / "partial_overlaps.dcm", ct)
    assert set(ref.names) == set(numbers)
    assert any("more than one segment" in w for w in ref.warnings)
    got = ref.labels[0].numpy()
    # dcmqi wrote non-overlapping layers (partial_overlaps-1..3.nrrd), voxel value = segment
    # number; where segments overlap medxai keeps the higher number
    layers = [_nrrd_on(ct.image, d / f"partial_overlaps-{i}.nrrd") for i in (1, 2, 3)]
    maps = {n: np.any([layer == n for layer in layers], axis=0) for n in numbers}
    for n in numbers:
        higher = np.zeros_like(maps[n])
        for m in numbers:
            if m > n:
                higher |= maps[m]
        assert np.count_nonzero(maps[n]) > 0
        assert _dice(got == n, maps[n] & ~higher) == 1.0, f"segment {n}"


def test_small_crop_seg_matches_its_label_map() -> None:
    d = _seg_dir() / "23x38x3"
    image = load_image(d / "image")
    ref = rasterise_reference(d / "seg" / "label.seg", image)
    truth = _nrrd_on(image.image, d / "nrrd" / "label.nrrd")
    got = ref.labels[0].numpy()
    assert np.count_nonzero(truth) > 0
    assert _dice(got > 0, truth > 0) == 1.0


def test_rtstruct_matches_rt_utils() -> None:
    rt_utils = pytest.importorskip("rt_utils")
    d = shared_path("dicom", "rt-utils_testdata", "tests", "mock_data")
    series_dir = Path(__import__("tempfile").mkdtemp(prefix="medxai-rt-"))
    import shutil

    for name in ("ct_1.dcm", "ct_2.dcm"):
        shutil.copy(d / name, series_dir / name)
    ct = load_image(series_dir)
    ref = rasterise_reference(d / "rt.dcm", ct)
    assert ref.names == {1: "ROI-1"}
    rts = rt_utils.RTStructBuilder.create_from(dicom_series_path=str(series_dir),
                                               rt_struct_path=str(d / "rt.dcm"))
    mask = rts.get_roi_mask_by_name("ROI-1")  # (rows, cols, slices), rt-utils' slice order
    rt_series = rts.series_data  # sorted as rt-utils sorts them
    got = ref.labels[0].numpy() == 1  # (I=cols, J=rows, K)
    # put rt-utils' slices on medxai's k by their positions
    zs = [float(s.ImagePositionPatient[2]) for s in rt_series]
    ours = [float(ds.ImagePositionPatient[2]) for ds in ct.dicom.datasets]
    theirs = np.stack([mask[:, :, zs.index(z)].T for z in ours], axis=-1)
    assert np.count_nonzero(theirs) > 0
    # rt-utils (OpenCV fillPoly on rounded points) lands one voxel off at the edges of this small
    # square; the regions agree
    assert _dice(got, theirs) > 0.85
    # exactly the voxels whose centres lie inside the contours (skimage's polygon rule)
    draw = pytest.importorskip("skimage.draw")
    from medxai.io.geometry import ras_to_lps_affine

    inv = np.linalg.inv(ras_to_lps_affine(ct.image.affine.numpy()))
    expected = np.zeros_like(got)
    rt = pydicom.dcmread(str(d / "rt.dcm"))
    for c in rt.ROIContourSequence[0].ContourSequence:
        pts = np.asarray([float(v) for v in c.ContourData]).reshape(-1, 3)
        idx = (inv @ np.c_[pts, np.ones(len(pts))].T).T
        k = round(float(idx[0, 2]))
        ii, jj = draw.polygon(idx[:, 0], idx[:, 1], shape=got.shape[:2])
        layer = np.zeros(got.shape[:2], dtype=bool)
        layer[ii, jj] = True
        expected[:, :, k] ^= layer
    np.testing.assert_array_equal(got, expected)


def test_rasterising_a_non_segmentation_is_refused() -> None:
    from medxai.errors import UnsupportedInputError

    d = shared_path("dicom", "dcmqi_data", "data")
    with pytest.raises(UnsupportedInputError, match="not a segmentation"):
        rasterise_reference(d / "sr-example" / "sr.dcm",
                            load_image(d / "segmentations" / "ct-3slice"))


def _info(path: Path) -> dict:
    from medxai.cli.main import cli

    res = CliRunner().invoke(cli, ["info", "--json", str(path)])
    assert res.exit_code == 0, res.output
    return json.loads(res.output[res.output.index("{"):])


def _parametric_map(tmp: Path) -> Path:
    """A Parametric Map as medxai writes them (on the dcmqi 3-slice CT)."""
    from medxai.io.writers.dicom_pm import write_dicom_pm

    ct = load_image(_seg_dir() / "ct-3slice")
    values = np.random.default_rng(0).random(tuple(ct.image.shape[1:]))
    return write_dicom_pm(values, ct.dicom, tmp / "pm.dcm", method="gradcam",
                          model_name="test-model", model_version="0")


def test_segment_on_a_parametric_map_says_what_it_is(tmp_path: Path) -> None:
    from medxai.errors import UnsupportedInputError

    with pytest.raises(UnsupportedInputError) as err:
        load_image(_parametric_map(tmp_path))
    assert "Parametric Map Storage" in err.value.detail
    assert err.value.hint and "derived result" in err.value.hint and "computed from" in \
        err.value.hint


def test_info_describes_seg_rtstruct_pm_sr(tmp_path: Path) -> None:
    d = shared_path("dicom")
    seg = _info(d / "dcmqi_data" / "data" / "segmentations" / "liver.dcm")["derived"]
    assert seg["kind"] == "SEG" and seg["frames"] == 3 and seg["segments"][0]["label"] == "Liver"
    assert seg["referenced_series"] == [
        "1.2.392.200103.20080913.113635.1.2009.6.22.21.43.10.23430.1"]
    rt = _info(d / "rt-utils_testdata" / "tests" / "mock_data" / "rt.dcm")["derived"]
    assert rt["kind"] == "RTSTRUCT" and rt["rois"] == [
        {"number": 1, "name": "ROI-1", "contours": 2, "geometric_types": ["CLOSED_PLANAR"]}]
    pm_path = _parametric_map(tmp_path)
    pm = _info(pm_path)["derived"]
    ds = pydicom.dcmread(str(pm_path), stop_before_pixels=True)
    assert pm["kind"] == "PM" and pm["grid"] == [ds.Columns, ds.Rows, pm["frames"]]
    assert pm["quantity"] and pm["pixel_data"] in ("FloatPixelData", "PixelData",
                                                    "DoubleFloatPixelData")
    sr = _info(d / "dcmqi_data" / "data" / "sr-example" / "sr.dcm")["derived"]
    assert sr["kind"] == "SR" and sr["template"] == "DCMR TID 1500"
    suv = [m for m in sr["measurements"] if m["name"] == "SUVbw"]
    assert suv and suv[0]["value"] == pytest.approx(6.01529)


def test_info_text_lists_segments() -> None:
    from medxai.cli.main import cli

    path = shared_path("dicom", "dcmqi_data", "data", "segmentations", "liver.dcm")
    res = CliRunner().invoke(cli, ["info", str(path)])
    assert res.exit_code == 0 and "segment   1    Liver" in res.output
    assert describe_derived(pydicom.dcmread(str(path), stop_before_pixels=True))["kind"] == "SEG"


@pytest.mark.parametrize("seg_type", ["binary", "labelmap", "fractional"])
def test_seg_types_written_on_an_oblique_series_come_back_on_its_grid(tmp_path: Path,
                                                                      seg_type: str) -> None:
    """medxai's SEG writer on the oblique CT sample, read back by rasterise_reference (highdicom's
    get_volume + match_geometry): the label map itself (binary, label map) or the probabilities
    cut at half the maximum fractional value (fractional); on a series of fewer slices, the
    frames beyond it are left out with a warning."""
    import shutil

    from medxai.io.writers import write_dicom_seg
    from tests.helpers_dicom import load_series
    from tests.test_writers import _ct_series
    from tests.test_writers_seg_types import LABELS, MODEL, _probabilities

    files = _ct_series("sample-oblique")
    source, volume = load_series(files)
    prob, labels = _probabilities(volume.shape)
    path = write_dicom_seg(labels, source, LABELS, *MODEL, tmp_path / "seg.dcm",
                           seg_type=seg_type, probabilities=prob)
    expected = labels.astype(np.int16)
    if seg_type == "fractional":
        stored = np.rint(prob * 255)
        expected = np.select([stored[2] > 127.5, stored[1] > 127.5], [2, 1], 0).astype(np.int16)
    ref = rasterise_reference(path, load_image(files[0].parent))
    # a label map's segment 0 (its background) is no label: an evaluation would score it
    assert ref.names == {1: "lesion", 2: "liver"} and not ref.warnings
    np.testing.assert_array_equal(ref.labels[0].numpy(), expected)
    part = tmp_path / "three-slices"
    part.mkdir()
    for ds, f in zip(source.datasets[:3], source.paths[:3]):
        shutil.copy(f, part / f.name)
    fewer = rasterise_reference(path, load_image(part))
    np.testing.assert_array_equal(fewer.labels[0].numpy(), expected[..., :3])
    left_out = {n: int(np.count_nonzero(expected[..., 3:] == n)) for n in (1, 2)}
    assert fewer.warnings == [f"{left_out[n]} voxel(s) of segment {n} lie outside the series "
                              "grid; left out" for n in (1, 2) if left_out[n]]


def test_seg_frames_between_voxels_are_refused() -> None:
    from medxai.errors import SeriesError

    d = _seg_dir()
    ds = pydicom.dcmread(str(d / "liver.dcm"))
    for item in ds.PerFrameFunctionalGroupsSequence:  # 0.3 mm off the series' voxel centres
        pos = item.PlanePositionSequence[0].ImagePositionPatient
        item.PlanePositionSequence[0].ImagePositionPatient = [float(pos[0]) + 0.3, pos[1], pos[2]]
    with pytest.raises(SeriesError, match="cannot be placed on the series' voxel grid"):
        rasterise_reference(ds, load_image(d / "ct-3slice"))
