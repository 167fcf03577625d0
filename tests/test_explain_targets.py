"""Explanation targets (segment, border, missed, image, user box/mask), UNet layer role names,
the new methods (HiResCAM, LayerCAM, SmoothGrad) and the informativeness metrics: 2D and 3D,
whole-image and sliding-window. Small networks only; the val measurement is
benchmarks/saliency_choice.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.networks.nets import UNet

from medxai.errors import ExplainError
from medxai.explain import (
    SegmentationTarget,
    box_region,
    complexity,
    context_share,
    deletion_insertion,
    energy_in_mask,
    explain,
    informativeness,
    lesion_energy_ratio,
    redundancy,
    resolve_layers,
    sliding_window_saliency,
    sparseness,
    unet_layer_aliases,
)


def _logits(spatial: tuple[int, ...]) -> torch.Tensor:
    """Two-class logits: foreground probability 0.9 in a block, 0.3 in a ring around it, 0.01
    elsewhere."""
    p = torch.full(spatial, 0.01)
    ring = tuple(slice(2, s - 2) for s in spatial)
    core = tuple(slice(4, s - 4) for s in spatial)
    p[ring] = 0.3
    p[core] = 0.9
    fg = torch.log(p / (1 - p))
    return torch.stack([torch.zeros_like(fg), fg])[None]


@pytest.mark.parametrize("spatial", [(12, 14), (12, 12, 10)])
def test_regions_ask_different_questions(spatial: tuple[int, ...]) -> None:
    logits = _logits(spatial)
    core = tuple(slice(4, s - 4) for s in spatial)
    ring = tuple(slice(2, s - 2) for s in spatial)
    seg = SegmentationTarget(1, "segment").mask(logits)[0, 0]
    expected = torch.zeros(spatial, dtype=torch.bool)
    expected[core] = True
    assert torch.equal(seg, expected)
    border = SegmentationTarget(1, "border", border_width=1).mask(logits)[0, 0]
    # the band straddles the contour: the mask's outermost layer and the layer just outside
    grown = torch.zeros(spatial, dtype=torch.bool)
    grown[tuple(slice(3, s - 3) for s in spatial)] = True
    shrunk = torch.zeros(spatial, dtype=torch.bool)
    shrunk[tuple(slice(5, s - 5) for s in spatial)] = True
    assert torch.equal(border, grown & ~shrunk)
    missed = SegmentationTarget(1, "missed").mask(logits)[0, 0]
    ringset = torch.zeros(spatial, dtype=torch.bool)
    ringset[ring] = True
    assert torch.equal(missed, ringset & ~expected)
    assert SegmentationTarget(1, "missed").polarity == -1
    # the missed score is the negated sum of the logits there: positive (evidence against)
    assert float(SegmentationTarget(1, "missed")(logits)[0]) > 0
    # a threshold below 0.3 takes the ring into the segment
    assert torch.equal(SegmentationTarget(1, threshold=0.2).mask(logits)[0, 0], ringset)
    assert SegmentationTarget(1, "predicted").region == "segment"


def test_bad_region_names_and_boxes_are_explained() -> None:
    with pytest.raises(ExplainError, match="border"):
        SegmentationTarget(1, "bordr")
    with pytest.raises(ExplainError, match="4 values"):
        box_region((10, 10), (1, 2, 3))
    with pytest.raises(ExplainError, match="empty"):
        box_region((10, 10), (5, 5, 5, 9))
    box = box_region((10, 12), (2, 3, 5, 20))  # clipped to the grid
    assert box.sum() == 3 * 9 and box[2, 3] and not box[5, 3]


def _unet(dims: int) -> UNet:
    torch.manual_seed(0)
    return UNet(spatial_dims=dims, in_channels=1, out_channels=2, channels=(4, 8, 16),
                strides=(2, 2), num_res_units=1).eval()


def test_unet_layers_have_role_names() -> None:
    net = _unet(2)
    aliases = unet_layer_aliases(net)
    assert aliases["skip.0"] == "model.1"
    assert aliases["encoder.0"] == "model.0"
    assert aliases["encoder.1"] == "model.1.submodule.0"
    assert aliases["bottleneck"] == "model.1.submodule.1.submodule"
    assert aliases["decoder.0"] == "model.2"
    assert [n for n, _ in resolve_layers(net, "encoder")] == ["model.0", "model.1.submodule.0"]
    assert [n for n, _ in resolve_layers(net, "bottleneck, skip.0")] == [
        "model.1.submodule.1.submodule", "model.1"]
    with pytest.raises(ExplainError, match="bottleneck"):
        resolve_layers(net, "botleneck")


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("method,layer,options", [
    ("gradcam", "bottleneck", {}), ("hirescam", "skip.0", {}), ("layercam", "encoder", {}),
    ("gradcampp", "encoder.1", {}), ("smoothgrad", None, {"samples": 2}),
])
@pytest.mark.parametrize("target", ["segment", "border", "missed", "image"])
def test_methods_and_targets_2d_3d(dims: int, method: str, layer: str | None,
                                   options: dict, target: str) -> None:
    net = _unet(dims)
    spatial = (16, 16) if dims == 2 else (16, 16, 8)
    x = torch.rand((1, 1, *spatial), generator=torch.Generator().manual_seed(0))
    extra = {"layer": layer} if layer else {}
    sal = explain(net, x, method, target=target, **extra, **options)
    assert sal.shape == (1, 1, *spatial)
    assert torch.isfinite(sal).all() and sal.min() >= 0 and sal.max() <= 1


def test_user_box_and_mask_give_the_same_map() -> None:
    net = _unet(2)
    x = torch.rand((1, 1, 16, 16), generator=torch.Generator().manual_seed(1))
    by_box = explain(net, x, "hirescam", roi=(2, 3, 9, 12))
    by_mask = explain(net, x, "hirescam", roi=box_region((16, 16), (2, 3, 9, 12)))
    assert torch.equal(by_box, by_mask)
    with pytest.raises(ExplainError, match="roi"):
        explain(net, x, "gradcam", roi=(2, 3, 9, 12), target="border")


@pytest.mark.parametrize("target", ["border", "missed"])
def test_sliding_window_named_targets_are_per_window(target: str) -> None:
    net = _unet(2)
    x = torch.rand((1, 1, 16, 16), generator=torch.Generator().manual_seed(2))
    whole = explain(net, x, "hirescam", target=target, border_width=2)
    one_window = sliding_window_saliency(net, x, "hirescam", roi_size=(16, 16),
                                         target=SegmentationTarget(1, target, border_width=2))
    assert torch.allclose(whole, one_window, atol=1e-5)
    tiled = sliding_window_saliency(net, x, "hirescam", roi_size=(8, 8), overlap=0.5,
                                    target=target)
    assert tiled.shape == (1, 1, 16, 16) and torch.isfinite(tiled).all()


def test_informativeness_metrics_on_known_maps() -> None:
    mask = torch.zeros(1, 1, 10, 10, dtype=torch.bool)
    mask[..., 2:5, 2:5] = True
    copy = mask.float()
    assert redundancy(copy, mask)[0] == pytest.approx(1.0)
    assert float(context_share(copy, mask)[0]) == pytest.approx(0.0)
    uniform = torch.ones(1, 1, 10, 10)
    assert np.isnan(redundancy(uniform, mask)[0])
    assert float(context_share(uniform, mask)[0]) == pytest.approx(0.91)
    assert lesion_energy_ratio(uniform, mask)[0] == pytest.approx(1.0)
    assert lesion_energy_ratio(copy, mask)[0] == pytest.approx(100 / 9)


def test_informativeness_equals_the_measures_one_by_one() -> None:
    """informativeness shares the map's conversion and centring between its measures: each
    value equals the function's own, bit for bit (random maps, a constant map, an all-zero
    map, a 3D map), with and without complexity."""
    rng = np.random.default_rng(11)
    sal = torch.from_numpy(rng.random((4, 1, 33, 27), dtype=np.float32))
    prob = torch.from_numpy(rng.random((4, 1, 33, 27), dtype=np.float32))
    mask = prob > 0.5
    sal[1] = 0.25
    sal[2] = 0.0
    for s, p, m in ((sal, prob, mask), (sal[:1, :, :, :, None].repeat(1, 1, 1, 1, 5),
                                        prob[:1, :, :, :, None].repeat(1, 1, 1, 1, 5),
                                        mask[:1, :, :, :, None].repeat(1, 1, 1, 1, 5))):
        got = informativeness(s, p, m)
        want = {
            "corr_probability": redundancy(s, p),
            "corr_mask": redundancy(s, m.float()),
            "energy_in_mask": energy_in_mask(s, m).numpy().astype(np.float64),
            "context_share": context_share(s, m).numpy().astype(np.float64),
            "sparseness": sparseness(s),
            "complexity": complexity(s),
        }
        assert set(got) == set(want)
        for k, v in want.items():
            np.testing.assert_array_equal(got[k], v, err_msg=k)
        assert "complexity" not in informativeness(s, p, m, with_complexity=False)


def test_sparseness_sorts_first_and_gives_the_figures_of_the_formula() -> None:
    """sparseness sorts the absolute values before scaling them (faster, in float32): bit for
    bit the Gini index of Quantus' order (scale by the maximum, add 1e-7, then sort), for
    float32 and float64 maps, negative values, an all-zero map and a one-pixel map."""

    def quantus_order(maps: torch.Tensor) -> np.ndarray:
        a = np.abs(maps.double().numpy().reshape(maps.shape[0], -1))
        peak = a.max(1, keepdims=True)
        a = np.where(peak > 0, a / np.where(peak > 0, peak, 1), a) + 1e-7
        a = np.sort(a, axis=1)
        p = a.shape[1]
        ranks = np.arange(1, p + 1)[None]
        return ((2 * ranks - p - 1) * a).sum(1) / (p * a.sum(1))

    rng = np.random.default_rng(5)
    maps = torch.from_numpy(rng.normal(size=(4, 1, 64, 48)).astype(np.float32))
    maps[1] = 0.0
    maps[2] = 0.0
    maps[2, 0, 7, 9] = -3.5
    maps[3] = maps[3].clamp_min(0) ** 3
    for m in (maps, maps.double()):
        np.testing.assert_array_equal(sparseness(m), quantus_order(m))
        got = informativeness(m, m.abs(), m > 0)["sparseness"]
        np.testing.assert_array_equal(got, quantus_order(m))
    assert sparseness(maps)[1] == 0.0 and sparseness(maps)[2] > 0.99


def test_deletion_scores_the_chosen_target() -> None:
    net = _unet(2)
    x = torch.rand((1, 1, 16, 16), generator=torch.Generator().manual_seed(3))
    target = SegmentationTarget(1, "image")
    sal = explain(net, x, "hirescam", target=target)
    di = deletion_insertion(net, x, sal, steps=4, baseline="mean", target=target,
                            insertion=False)
    assert di["deletion_scores"][0, 0] == pytest.approx(1.0)
    assert "insertion_auc" not in di and "random_deletion_auc" in di


def test_redundancy_equals_scipy_pearsonr_row_by_row() -> None:
    """medxai's row-wise Pearson (numpy, for speed) against scipy.stats.pearsonr: random maps,
    a constant row (NaN in both), a float32 map against a boolean mask, 3D maps."""
    from scipy import stats

    rng = np.random.default_rng(4)
    sal = torch.from_numpy(rng.random((4, 1, 37, 29), dtype=np.float32))
    ref = torch.from_numpy(rng.random((4, 1, 37, 29)) > 0.6)
    sal[1] = 0.1  # constant: undefined
    sal[2] = ref[2].float() * 0.7 + 0.3 * sal[2]
    got = redundancy(sal, ref)
    a = sal.double().numpy().reshape(4, -1)
    b = ref.double().numpy().reshape(4, -1)
    for i in range(4):
        if i == 1:
            assert np.isnan(got[i])
        else:
            assert got[i] == pytest.approx(stats.pearsonr(a[i], b[i]).statistic, abs=1e-12)
    vol = torch.from_numpy(rng.random((2, 1, 9, 8, 7)))
    assert redundancy(vol, vol * 2 + 1) == pytest.approx([1.0, 1.0], abs=1e-12)
