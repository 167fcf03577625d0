"""The clinician's preview (medxai.io.writers.preview): a photo, an X-ray and a volume rendered,
their size and panel layout checked on the picture itself (panels found by scanning for the white
separator columns) against the layout the renderer returns."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from medxai.io.writers.png import jet
from medxai.io.writers.preview import (
    PreviewInfo,
    render_preview,
    segment_size_text,
    write_clinical_preview,
)
from tests.conftest import shared_path

ROOT = Path(__file__).resolve().parents[1]


def _blob(shape, centre, radius):
    grids = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    d2 = sum((g - c) ** 2 for g, c in zip(grids, centre))
    return np.exp(-d2 / (2.0 * radius**2)).astype(np.float32)


def _panels_in_band(pic: np.ndarray, y0: int, y1: int) -> list[tuple[int, int]]:
    """Runs of columns (x0, x1) in rows y0..y1 that are not entirely white."""
    band = pic[y0:y1]
    busy = ~(band == 255).all(axis=(0, 2))
    runs, start = [], None
    for x, b in enumerate(busy):
        if b and start is None:
            start = x
        if not b and start is not None:
            runs.append((start, x))
            start = None
    if start is not None:
        runs.append((start, len(busy)))
    return runs


def _check_layout(pic: np.ndarray, layout: dict, n_rows: int, n_panels: int, bar: bool) -> None:
    assert pic.shape == (layout["height"], layout["width"], 3)
    assert len(layout["rows"]) == n_rows
    for row in layout["rows"]:
        boxes = [p["box"] for p in row["panels"]]
        assert len(boxes) == n_panels
        y0, y1 = boxes[0][1], boxes[0][3]
        found = _panels_in_band(pic, y0, y1)
        expected = [(b[0], b[2]) for b in boxes] + ([tuple(row["colorbar"][::2])] if bar else [])
        # the legend text right of the colour bar makes one more run; panels and bar come first
        assert found[: len(expected)] == expected
        assert ("colorbar" in row) == bar
    # header and footer hold text (dark pixels)
    for key in ("header", "footer"):
        x0, y0, x1, y1 = layout[key]
        assert (pic[y0:y1, x0:x1] < 128).any(), key
    assert "AI result, not for diagnostic use" in layout["texts"]


def test_photo_preview(tmp_path):
    photo = ROOT / "sample_data" / "dermoscopy.jpg"
    rgb = np.transpose(np.asarray(Image.open(photo)), (2, 1, 0))  # (3, I, J)
    mask = np.asarray(Image.open(photo.with_name("dermoscopy_mask.png")).convert("L")).T > 127
    labels = mask.astype(np.uint8)
    sal = _blob(labels.shape, (300, 250), 60)
    info = PreviewInfo("isic2018-lesion-unet", "1.0.0", "hirescam", "segment", None)
    path, layout = write_clinical_preview(rgb, labels, {1: sal}, tmp_path / "p.png",
                                          [{"value": 1, "name": "lesion"}], info)
    pic = np.asarray(Image.open(path).convert("RGB"))
    _check_layout(pic, layout, 1, 3, bar=True)
    assert [p["title"] for p in layout["rows"][0]["panels"]] == ["input", "lesion contour",
                                                                 "saliency"]
    assert layout["rows"][0]["title"] == f"lesion: area {int(labels.sum())} px"  # no spacing
    assert layout["rows"][0]["legend"] == "saliency: HiResCAM\nof lesion\ntarget: segment"
    assert "isic2018-lesion-unet 1.0.0" in layout["texts"][0]
    # the panels are the photo at scale (640 x 480 is drawn as it is)
    assert layout["panel_size"] == [640, 480]
    x0, y0, x1, y1 = layout["rows"][0]["panels"][0]["box"]
    assert np.array_equal(pic[y0:y1, x0:x1], np.transpose(rgb, (2, 1, 0)))
    # heat map blended at most half: at the hottest pixel, half image and half jet(1)
    hx, hy = 300, 250
    sx0 = layout["rows"][0]["panels"][2]["box"][0]
    hot = pic[y0 + hy, sx0 + hx].astype(float)
    expected = 0.5 * rgb[:, hx, hy].astype(float) + 0.5 * jet(1.0).astype(float)
    assert np.abs(hot - expected).max() <= 2
    # the colour bar runs from hot (top) to cold (bottom)
    bx0, by0, bx1, by1 = layout["rows"][0]["colorbar"]
    top, bottom = pic[by0, bx0 + 2].astype(int), pic[by1 - 1, bx0 + 2].astype(int)
    assert top[0] > top[2] and bottom[2] > bottom[0]


def test_xray_preview_in_mm_without_saliency(tmp_path):
    xray = shared_path("cxr_lungs", "val", "CHNCXR_0007_0.png")
    grey = np.asarray(Image.open(xray).convert("L")).T[None]
    labels = (np.asarray(Image.open(xray.with_name("CHNCXR_0007_0_mask.png")).convert("L")).T
              > 127).astype(np.uint8)
    picture, layout = render_preview(grey, labels, None, [{"value": 1, "name": "lungs"}],
                                     PreviewInfo("cxr-lungs-unet", "1.0.0", spacing=(0.5, 0.4)))
    _check_layout(picture, layout, 1, 2, bar=False)
    area = labels.sum() * 0.5 * 0.4
    assert layout["rows"][0]["title"] == f"lungs: area {area:.1f} mm²"
    assert layout["panel_size"] == [512, 512]


def test_volume_preview_one_row_per_label_three_slices(tmp_path):
    vol = shared_path("hippocampus", "imagesTr", "hippocampus_001.nii.gz")
    image = np.asarray(nib.load(vol).dataobj, dtype=np.float32)[None]
    labels = np.asarray(nib.load(str(vol).replace("imagesTr", "labelsTr")).dataobj).astype(np.uint8)
    sal = _blob(labels.shape, [s // 2 for s in labels.shape], 6)
    names = [{"value": 1, "name": "anterior"}, {"value": 2, "name": "posterior"}]
    info = PreviewInfo("hippocampus-unet", "1.0.0", "gradcam", None, (1.0, 1.0, 1.0))
    path, layout = write_clinical_preview(image, labels, {1: sal, 2: sal}, tmp_path / "v.png",
                                          names, info)
    pic = np.asarray(Image.open(path).convert("RGB"))
    _check_layout(pic, layout, 2, 4, bar=True)
    for row, value, name in zip(layout["rows"], (1, 2), ("anterior", "posterior")):
        count = int((labels == value).sum())
        assert row["title"] == f"{name}: volume {count:.0f} mm³ ({count / 1000:.2f} ml)"
        slices = [int(p["title"].split()[1].split("/")[0]) - 1 for p in row["panels"][1:]]
        present = np.flatnonzero((labels == value).any(axis=(0, 1)))
        assert len(slices) == 3 and all(present[0] <= k <= present[-1] for k in slices)
        assert slices == sorted(slices) and len(set(slices)) == 3
    # a 35 x 51 crop is drawn enlarged to at least 160 pixels on its shorter side
    assert min(layout["panel_size"]) >= 160


def test_segment_size_text():
    assert segment_size_text(10, (0.5, 0.5), 2) == "area 2.5 mm²"
    assert segment_size_text(10, None, 2) == "area 10 px"
    assert segment_size_text(2000, (1, 1, 2), 3) == "volume 4000 mm³ (4.00 ml)"
    assert segment_size_text(7, None, 3) == "volume 7 voxels"


def test_nothing_found_still_gets_its_row():
    image = np.zeros((1, 20, 10), np.float32)
    image[0, 5:8] = 1
    picture, layout = render_preview(image, np.zeros((20, 10), np.uint8), None,
                                     [{"value": 1, "name": "a"}, {"value": 2, "name": "b"}])
    assert [r["title"] for r in layout["rows"]] == ["a: area 0 px", "b: area 0 px"]
    assert picture.shape == (layout["height"], layout["width"], 3)
    with pytest.raises(Exception, match="differ"):
        render_preview(image, np.zeros((10, 20), np.uint8), None)
