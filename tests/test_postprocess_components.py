"""``keep_components``: keep the N largest regions of a label (two lung fields, not one)."""

from __future__ import annotations

import pytest
import torch

from medxai.errors import ModelError
from medxai.postprocess import check_postprocessing, postprocess_labels


def _labels() -> torch.Tensor:
    lab = torch.zeros(1, 12, 12, dtype=torch.uint8)
    lab[0, 1:5, 1:5] = 1      # 16 px: left lung
    lab[0, 1:5, 7:11] = 1     # 16 px: right lung
    lab[0, 9, 9] = 1          # 1 px speck
    lab[0, 7:9, 1:3] = 2      # another label, 4 px
    return lab


def test_keep_two_largest_components_drops_the_speck_only() -> None:
    out = postprocess_labels(_labels(), {"keep_components": 2})
    assert int((out == 1).sum()) == 32 and int(out[0, 9, 9]) == 0
    assert int((out == 2).sum()) == 4
    one = postprocess_labels(_labels(), {"keep_largest_component": True})
    assert int((one == 1).sum()) == 16  # the largest-only rule would drop a lung


def test_keep_components_per_label_and_checked_on_load() -> None:
    out = postprocess_labels(_labels(), {"keep_components": {"1": 1}})
    assert int((out == 1).sum()) == 16 and int((out == 2).sum()) == 4
    for bad in (-1, "2", True, 1.5):
        with pytest.raises(ModelError, match="keep_components"):
            check_postprocessing({"keep_components": bad})


def test_fill_holes_equals_scipy() -> None:
    """medxai's one-labelling hole filling gives scipy's binary_fill_holes exactly, in 2D and
    3D, for sparse and dense masks, empty and full ones."""
    import numpy as np
    from scipy import ndimage

    from medxai.postprocess import fill_holes

    rng = np.random.default_rng(0)
    for shape in [(64, 48), (20, 24, 16), (1, 30), (5, 1, 7)]:
        for density in (0.0, 0.3, 0.5, 0.7, 0.9, 1.0):
            mask = rng.random(shape) < density
            np.testing.assert_array_equal(fill_holes(mask), ndimage.binary_fill_holes(mask))
    ring = np.zeros((9, 9), dtype=bool)
    ring[2:7, 2:7] = True
    ring[4, 4] = False
    assert fill_holes(ring)[4, 4] and not fill_holes(ring)[0, 0]


def _reference(arr, spec):
    """The clean-up on the whole array with scipy alone (no bounding box)."""
    import numpy as np
    from scipy import ndimage

    out = arr.copy()
    values = [int(v) for v in np.unique(out) if v]
    if spec.get("keep_largest_component"):
        for v in values:
            comp, n = ndimage.label(out == v)
            if n > 1:
                sizes = np.bincount(comp.ravel())
                sizes[0] = 0
                out[(comp > 0) & (comp != int(np.argmax(sizes)))] = 0
    if spec.get("fill_holes"):
        for v in values:
            filled = ndimage.binary_fill_holes(out == v)
            out[filled & (out == 0)] = v
    return out


@pytest.mark.parametrize("shape", [(64, 48), (20, 24, 16)])
def test_bounding_box_clean_up_equals_the_whole_array(shape) -> None:
    """Post-processing works inside the foreground's box grown by one voxel: the same label maps
    as scipy on the whole array, for blobs with holes, specks, and blobs touching the border."""
    import numpy as np
    from scipy import ndimage

    from medxai.postprocess import foreground_box

    rng = np.random.default_rng(0)
    spec = {"keep_largest_component": True, "fill_holes": True}
    for trial in range(12):
        noise = ndimage.gaussian_filter(rng.random(shape), 2.0)
        arr = (noise > np.quantile(noise, 0.8)).astype(np.uint8)
        arr[noise > np.quantile(noise, 0.97)] = 2  # a second label inside the first
        if trial % 3 == 0:  # a hole that is only closed by the box's margin
            arr[(slice(5, 12),) * len(shape)] = 1
            arr[(slice(7, 10),) * len(shape)] = 0
        got = postprocess_labels(torch.from_numpy(arr)[None], spec)[0].numpy()
        np.testing.assert_array_equal(got, _reference(arr, spec))
    assert foreground_box(np.zeros(shape, np.uint8)) is None
    edge = np.zeros(shape, np.uint8)
    edge[(0,) * len(shape)] = 1
    assert foreground_box(edge) == tuple(slice(0, 2) for _ in shape)


def test_shortcuts_only_claim_what_labelling_finds() -> None:
    """The label-free shortcuts of the clean-up are sound: a mask said to be one region is one
    region for scipy, a mask said to hold no hole has none (scipy's binary_fill_holes), on
    many small random masks in 2D and 3D; and each shortcut applies to some masks."""
    import numpy as np
    from scipy import ndimage

    from medxai.postprocess import _may_enclose, _one_component

    rng = np.random.default_rng(3)
    one = no_hole = 0
    for trial in range(3000):
        shape = (5, 6) if trial % 3 else (4, 5, 3)
        mask = rng.random(shape) < rng.uniform(0.3, 0.95)
        if _one_component(mask):
            one += 1
            assert ndimage.label(mask)[1] == 1, mask
        if not _may_enclose(mask):
            no_hole += 1
            np.testing.assert_array_equal(ndimage.binary_fill_holes(mask), mask)
    assert one > 100 and no_hole > 100
