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
                # equal largest components: the last in scan order is kept (medxai's rule)
                largest = len(sizes) - 1 - int(np.argmax(sizes[::-1]))
                out[(comp > 0) & (comp != largest)] = 0
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


def _blobs(rng, shape, trial):
    """A random binary mask: smooth blobs of varying density, with specks, holes (some touching
    the array's border), ties in component size, empty and full masks."""
    import numpy as np
    from scipy import ndimage

    if trial == 0:
        return np.zeros(shape, bool)
    if trial == 1:
        return np.ones(shape, bool)
    if trial == 2:  # two components of the same size (a tie), one with a hole
        m = np.zeros(shape, bool)
        m[(slice(1, 6),) * len(shape)] = True
        m[(slice(8, 13),) * len(shape)] = True
        m[tuple(min(3, n - 1) for n in shape)] = False
        return m
    if trial == 3:  # a hole that only the array's border closes, and a ring open at the border
        m = np.zeros(shape, bool)
        m[(slice(0, 7),) * len(shape)] = True
        m[(slice(0, 3),) * len(shape)] = False
        m[(slice(2, 5),) * len(shape)] = False
        m[tuple(min(3, n - 1) for n in shape)] = True
        return m
    noise = ndimage.gaussian_filter(rng.random(shape), rng.uniform(0.5, 3.0))
    m = noise > np.quantile(noise, rng.uniform(0.3, 0.95))
    m ^= rng.random(shape) < rng.uniform(0.0, 0.05)  # specks and pinholes
    return m


@pytest.mark.parametrize("shape", [(40, 33), (14, 17, 11), (1, 25), (9, 1, 12)])
def test_mask_clean_up_equals_postprocess_labels(shape) -> None:
    """The clean-up of a one-value mask (the thresholded test-time augmentation views) gives the
    label map of postprocess_labels and of scipy on the whole array, for every spec, on random
    masks with holes touching the border, several components, ties in size, empty and full."""
    import numpy as np

    from medxai.postprocess import mask_clean_up

    rng = np.random.default_rng(1)
    specs = [
        {"keep_largest_component": True, "fill_holes": True},
        {"keep_largest_component": True},
        {"fill_holes": [2]},
        {"fill_holes": True},
        {"keep_components": 2, "fill_holes": True},
        {"keep_components": {"2": 3}, "keep_largest_component": [2]},
        {},
    ]
    for trial in range(40):
        mask = _blobs(rng, shape, trial)
        for spec in specs:
            for value in (1, 2):
                labels = torch.from_numpy(mask.astype(np.uint8) * value)[None]
                want = postprocess_labels(labels, spec)[0].numpy()
                got = mask_clean_up(spec, value)(mask)
                assert got.dtype == np.uint8
                np.testing.assert_array_equal(got, want, err_msg=f"{trial} {spec} {value}")
                if spec.get("keep_largest_component") is True or spec == {"fill_holes": True}:
                    np.testing.assert_array_equal(got, _reference(mask.astype(np.uint8) * value,
                                                                  spec))


def test_foreground_labeller_equals_threshold_and_postprocess_labels() -> None:
    """The bundled photo model's view labeller (threshold, then the clean-up of its one value)
    gives postprocess_labels of the thresholded map, on probability maps of every kind."""
    import numpy as np
    from scipy import ndimage

    from medxai.inference import foreground_labeller
    from medxai.models.registry import load_model

    bundle = load_model("isic2018-lesion-unet")
    labeller = foreground_labeller(bundle)
    threshold = bundle.contract.inference.threshold
    spec = dict(bundle.contract.clean_up)
    assert spec == {"keep_largest_component": True, "fill_holes": True}
    rng = np.random.default_rng(2)
    for trial in range(30):
        fg = ndimage.gaussian_filter(rng.random((70, 90)), rng.uniform(0.5, 4.0))
        fg = (fg - fg.min()) / max(float(np.ptp(fg)), 1e-9) if trial % 5 else fg * 0
        fg = torch.from_numpy(fg.astype(np.float32))[None]
        want = postprocess_labels((fg[0] > threshold).to(torch.uint8)[None], spec)
        got = labeller(fg)
        assert got.dtype == torch.uint8 and got.shape == (1, 70, 90)
        assert torch.equal(got, want)


def test_threshold_by_numpy_equals_torch() -> None:
    """The views' threshold by numpy gives torch's ``t > threshold`` (the threshold cast to the
    tensor's type, as torch casts a Python scalar), at and next to the threshold, for float32
    and float64, NaN and signed zeros included."""
    import numpy as np

    from medxai.inference import _above

    for threshold in (0.45, 0.1, 0.3, 0.7, 0.5, 0.0, 1.0):
        for dtype in (np.float32, np.float64):
            t = dtype(threshold)
            near = [np.nextafter(t, dtype(-1)), t, np.nextafter(t, dtype(2)), threshold]
            values = np.array(near + [0.0, -0.0, 1.0, np.nan, np.inf, -np.inf], dtype=dtype)
            x = torch.from_numpy(np.tile(values, (3, 1)))
            np.testing.assert_array_equal(_above(x, threshold), (x > threshold).numpy())
            np.testing.assert_array_equal(_above(x.T, threshold), (x.T > threshold).numpy())


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
    assert one > 50 and no_hole > 100, (one, no_hole)
