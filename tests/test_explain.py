"""Tests of medxai.explain: saliency methods, hooks hygiene, sliding windows, faithfulness."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.networks.nets import UNet
from torch import nn

from medxai.errors import ExplainError
from medxai.explain import (
    METHODS,
    SegmentationTarget,
    capture_layer,
    default_target_layer,
    deletion_insertion,
    energy_in_mask,
    explain,
    get_method,
    list_target_layers,
    randomisation_sanity,
    resolve_layer,
    sliding_window_saliency,
    spearman,
)

# Small options so that every method runs in well under a second on a CPU.
FAST = {
    "gradcam": {},
    "gradcampp": {},
    "hirescam": {},
    "layercam": {},
    "smoothgrad": {"samples": 2},
    "occlusion": {"patch_size": 2, "stride": 1},
    "ig": {"steps": 8},
}


# --- a network whose answer is known -----------------------------------------------------------

class Gate(nn.Module):
    """Multiplies feature maps by a fixed boolean region (zero outside)."""

    def __init__(self, region: torch.Tensor):
        super().__init__()
        self.register_buffer("region", region.float()[None, None])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.region


class RegionNet(nn.Module):
    """Two classes; the foreground logit at pixel p depends only on the input at p, and only
    inside ``region``: ``logit1 = 0.25 * sum_k mix_k(p) - 0.1`` there, ``-0.1`` outside;
    ``logit0 = 0``. For inputs in [0.5, 1.5] the predicted mask is exactly ``region``.
    """

    def __init__(self, region: torch.Tensor, in_channels: int = 2):
        super().__init__()
        conv = nn.Conv2d if region.ndim == 2 else nn.Conv3d
        norm = nn.BatchNorm2d if region.ndim == 2 else nn.BatchNorm3d
        self.features = conv(in_channels, 4, 1, bias=False)
        self.norm = norm(4)
        self.gate = Gate(region)
        self.mix = conv(4, 4, 1, bias=False)
        self.head = conv(4, 2, 1)
        with torch.no_grad():
            self.features.weight.fill_(0.5)
            self.mix.weight.zero_()
            self.mix.weight.view(4, 4).add_(torch.eye(4) * 1.0 + 0.1)
            self.head.weight.zero_()
            self.head.weight[1].fill_(0.25)
            self.head.bias.copy_(torch.tensor([0.0, -0.1]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = torch.relu(self.norm(self.features(x)))
        return self.head(self.mix(self.gate(f)))


def region_2d() -> torch.Tensor:
    r = torch.zeros(16, 16, dtype=torch.bool)
    r[3:8, 5:11] = True
    return r


def region_3d() -> torch.Tensor:
    r = torch.zeros(12, 12, 8, dtype=torch.bool)
    r[2:6, 3:9, 2:5] = True
    return r


def positive_input(spatial: tuple[int, ...], n: int = 2, c: int = 2, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return 0.5 + torch.rand((n, c, *spatial), generator=g)


def small_unet(spatial_dims: int, in_channels: int = 1) -> UNet:
    torch.manual_seed(0)
    return UNet(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=2,
                channels=(4, 8, 16), strides=(2, 2), num_res_units=1, norm="batch")


def snapshot(net: nn.Module) -> dict:
    """Everything about a model an explanation must leave as it found it."""
    return {
        "state": {k: v.detach().clone() for k, v in net.state_dict().items()},
        "training": [m.training for m in net.modules()],
        "requires_grad": [p.requires_grad for p in net.parameters()],
        "grads": [p.grad for p in net.parameters()],
        "hooks": [(len(m._forward_hooks), len(m._backward_hooks), len(m._forward_pre_hooks),
                   len(m._backward_pre_hooks)) for m in net.modules()],
    }


def assert_unchanged(net: nn.Module, before: dict) -> None:
    after = snapshot(net)
    assert after["state"].keys() == before["state"].keys()
    for key, value in before["state"].items():
        assert torch.equal(after["state"][key], value), key
    assert after["training"] == before["training"]
    assert after["requires_grad"] == before["requires_grad"]
    assert all(g is None for g in after["grads"])
    assert after["hooks"] == before["hooks"]


# --- targets -----------------------------------------------------------------------------------

def test_target_sums_label_logits_over_the_predicted_mask():
    region = region_2d()
    net = RegionNet(region).eval()
    x = positive_input((16, 16))
    logits = net(x)
    target = SegmentationTarget(1)
    assert torch.equal(target.mask(logits), region[None, None].expand(2, 1, 16, 16))
    expected = (logits[:, 1] * region).flatten(1).sum(1)
    assert torch.allclose(target(logits), expected)
    whole = SegmentationTarget(1, "image")(logits)
    assert torch.allclose(whole, logits[:, 1].flatten(1).sum(1))
    roi = torch.zeros(16, 16, dtype=torch.bool)
    roi[0, 0] = True
    assert torch.allclose(SegmentationTarget(1, roi)(logits), logits[:, 1, 0, 0])


def test_target_rejects_bad_label_and_roi():
    logits = torch.zeros(1, 2, 4, 4)
    with pytest.raises(ExplainError, match="out of range"):
        SegmentationTarget(2)(logits)
    with pytest.raises(ExplainError, match="region shape"):
        SegmentationTarget(1, torch.ones(3, 3, dtype=torch.bool))(logits)
    with pytest.raises(ExplainError):
        SegmentationTarget(1, "everywhere")


# --- known answers -----------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["gradcam", "gradcampp", "ig"])
@pytest.mark.parametrize("make_region", [region_2d, region_3d])
def test_gradient_methods_put_all_mass_in_the_region(method, make_region):
    region = make_region()
    net = RegionNet(region)
    x = positive_input(tuple(region.shape))
    sal = explain(net, x, method, **FAST[method])
    assert sal.shape == (2, 1, *region.shape)
    assert sal.dtype == torch.float32
    # Nothing outside the region influences the target: exactly zero there.
    assert torch.all(sal[:, :, ~region] == 0)
    assert torch.all(sal[:, :, region] > 0)
    assert torch.allclose(sal.flatten(1).amax(1), torch.ones(2))
    assert torch.allclose(energy_in_mask(sal, region), torch.ones(2))


def test_gradcam_known_values():
    # At layer "mix" the target's gradient is 0.25 per channel inside the region (30 of 256
    # pixels), so w_k = 0.25 * 30 / 256 for every k and the map is proportional to sum_k A_k.
    region = region_2d()
    net = RegionNet(region)
    x = positive_input((16, 16), n=1)
    sal = explain(net, x, "gradcam", layer="mix")
    with torch.no_grad():
        net.eval()
        acts = net.mix(net.gate(torch.relu(net.norm(net.features(x))))).sum(1, keepdim=True)
    assert torch.allclose(sal, acts / acts.max(), atol=1e-6)


@pytest.mark.parametrize("make_region, n, stride, share", [
    (region_2d, 2, 1, 0.8),
    # 3D convolutions are slow on a busy CPU: one sample, non-overlapping patches. The 1-voxel
    # halo of patches straddling the border weighs more around this small (4x6x3) region.
    (region_3d, 1, 2, 0.6),
])
def test_occlusion_concentrates_on_the_region(make_region, n, stride, share):
    region = make_region()
    net = RegionNet(region)
    x = positive_input(tuple(region.shape), n=n)
    sal = explain(net, x, "occlusion", patch_size=2, stride=stride, fill="zero", batch_size=64)
    assert sal.shape == (n, 1, *region.shape)
    assert energy_in_mask(sal, region).min() > share
    # A 2-pixel patch reaches at most 1 pixel beyond the region: beyond that, exactly zero.
    near = torch.nn.functional.max_pool2d if region.ndim == 2 else torch.nn.functional.max_pool3d
    reach = near(region[None, None].float(), 3, stride=1, padding=1)[0, 0].bool()
    assert torch.all(sal[:, :, ~reach] == 0)
    assert torch.all(sal[:, :, region] > 0)
    if region.ndim == 2:
        # With 1-pixel patches occlusion is exact: zero outside, positive inside.
        exact = explain(net, x, "occlusion", patch_size=1, stride=1, fill="zero", batch_size=64)
        assert torch.all(exact[:, :, ~region] == 0) and torch.all(exact[:, :, region] > 0)


def test_empty_prediction_gives_a_zero_map_not_nan():
    net = RegionNet(region_2d())
    x = torch.zeros(1, 2, 16, 16)  # logit1 = -0.1 everywhere: no foreground predicted
    for method in METHODS:
        sal = explain(net, x, method, **FAST[method])
        assert torch.all(sal == 0), method


# --- the model is given back unchanged -----------------------------------------------------------

@pytest.mark.parametrize("method", list(METHODS))
def test_model_unchanged_after_normal_and_failing_runs(method):
    net = small_unet(2)
    net.train()
    net.model[0].eval()  # a submodule in another mode must keep it
    first = next(net.parameters())
    first.requires_grad_(False)
    user_hook = net.model[2].register_forward_hook(lambda *a: None)
    before = snapshot(net)
    x = torch.randn(1, 1, 16, 16)
    sal = explain(net, x, method, **{**FAST[method], **({"patch_size": 4, "stride": 4}
                                                         if method == "occlusion" else {})})
    assert sal.shape == (1, 1, 16, 16)
    assert_unchanged(net, before)
    with pytest.raises(ExplainError, match="out of range"):
        explain(net, x, method, target_label=7, **FAST[method])
    assert_unchanged(net, before)
    assert len(net.model[2]._forward_hooks) == 1  # the user's own hook is still there
    user_hook.remove()


def test_capture_layer_removes_hook_when_the_body_raises():
    net = small_unet(2).train()
    before = snapshot(net)
    with pytest.raises(RuntimeError, match="boom"):
        with capture_layer(net, "model.1.submodule") as capture:
            assert not net.training
            assert not any(p.requires_grad for p in net.parameters())
            net(torch.randn(1, 1, 16, 16))
            assert capture.activations is not None and capture.activations.shape == (1, 4, 8, 8)
            raise RuntimeError("boom")
    assert_unchanged(net, before)


# --- layers --------------------------------------------------------------------------------------

def test_wrong_layer_name_lists_valid_names():
    net = small_unet(2)
    with pytest.raises(ExplainError) as info:
        explain(net, torch.randn(1, 1, 16, 16), layer="model.1.submodle")
    message = str(info.value)
    assert "closest: model.1.submodule," in message
    for name in list_target_layers(net):
        assert name in message


def test_layers_of_a_monai_unet():
    net = small_unet(3)
    names = list_target_layers(net)
    assert "model.1.submodule" in names and "model.0.conv.unit0.conv" in names
    assert "model.0.conv.unit0.adn" not in names  # no convolution inside
    assert default_target_layer(net) == "model.1"
    wrapped = nn.Sequential(net)
    assert default_target_layer(wrapped) == "0.model.1"
    name, module = resolve_layer(net, net.model[2])
    assert name == "model.2" and module is net.model[2]
    assert default_target_layer(RegionNet(region_2d())) == "mix"


def test_unknown_method_suggests_the_closest():
    with pytest.raises(ExplainError, match="did you mean 'occlusion'"):
        get_method("occlusoin")
    assert get_method("Grad-CAM++") is METHODS["gradcampp"]
    with pytest.raises(ExplainError, match="does not accept options"):
        explain(small_unet(2), torch.randn(1, 1, 16, 16), "occlusion", layer="model.0")


# --- MONAI UNet, 2D and 3D -----------------------------------------------------------------------

@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("spatial", [(32, 24), (16, 16, 8)])
def test_unet_saliency_shape_and_range(method, spatial):
    net = small_unet(len(spatial), in_channels=2)
    x = torch.randn(2, 2, *spatial)
    options = dict(FAST[method])
    if method == "occlusion":
        options = {"patch_size": 8, "stride": 8}
    sal = explain(net, x, method, **options)
    assert sal.shape == (2, 1, *spatial)
    assert sal.dtype == torch.float32
    assert torch.isfinite(sal).all()
    assert sal.min() >= 0 and sal.max() <= 1


def test_explain_with_roi_changes_the_target():
    net = small_unet(2)
    x = torch.randn(1, 1, 16, 16)
    roi = torch.zeros(16, 16, dtype=torch.bool)
    roi[2:6, 2:6] = True
    a = explain(net, x, "ig", roi=roi, steps=4)
    b = explain(net, x, "ig", roi=~roi, steps=4)
    assert not torch.allclose(a, b)


def test_metatensor_input():
    from monai.data import MetaTensor

    net = small_unet(2)
    x = torch.randn(1, 1, 16, 16)
    cpu = explain(net, MetaTensor(x), "gradcam")
    assert type(cpu) is torch.Tensor and torch.equal(cpu, explain(net, x, "gradcam"))


@pytest.mark.skipif(not torch.cuda.is_available(),
                    reason="no CUDA device (torch.cuda.is_available() is False)")
def test_every_method_on_cuda_matches_the_cpu():
    net = small_unet(2)
    x = torch.randn(1, 1, 16, 16)
    gpu_net = small_unet(2).cuda()
    for method in METHODS:
        options = {"patch_size": 4, "stride": 4} if method == "occlusion" else FAST[method]
        sal = explain(gpu_net, x.cuda(), method, **options)
        assert sal.device.type == "cuda"
        assert torch.allclose(sal.cpu(), explain(net, x, method, **options), atol=1e-3)
    with pytest.raises(ExplainError, match="same device"):
        explain(gpu_net, x, "gradcam")


# --- sliding windows -----------------------------------------------------------------------------

def _old_sliding_window_saliency(net, x, method, roi_size, overlap=0.25, mode="gaussian",
                                 sw_batch_size=1, *, roi=None, target="segment",
                                 padding_mode="constant", **options):
    """Today's hand-written window layout and blending (before MONAI's sliding_window_inference
    ran it), kept as the reference: MONAI's scan interval, centred padding, dense_patch_slices,
    compute_importance_map, raw maps blended on the CPU, divided by the summed weights, cropped."""
    import torch.nn.functional as F
    from monai.data.utils import compute_importance_map, dense_patch_slices

    from medxai.explain import SegmentationTarget
    from medxai.explain.methods import run_method

    n, size = x.shape[0], tuple(x.shape[2:])
    before = [max(r - s, 0) // 2 for r, s in zip(roi_size, size)]
    after = [max(r - s, 0) - b for r, s, b in zip(roi_size, size, before)]
    pad = [p for d in reversed(range(len(size))) for p in (before[d], after[d])]
    mask = None if roi is None else roi.expand(n, 1, *size)
    if any(pad):
        x = F.pad(x, pad, mode=padding_mode)
        mask = None if mask is None else F.pad(mask.to(torch.uint8), pad).bool()
    padded = tuple(x.shape[2:])
    interval = [r if r == s else max(1, int(r * (1 - overlap))) for s, r in zip(padded, roi_size)]
    windows = dense_patch_slices(padded, roi_size, interval, return_slice=True)
    weight_map = compute_importance_map(roi_size, mode=mode, sigma_scale=0.125, device="cpu",
                                        dtype=torch.float32).as_subclass(torch.Tensor)
    total = torch.zeros((n, 1, *padded))
    weight = torch.zeros((1, 1, *padded))
    for w in windows:
        weight[(slice(None), slice(None), *w)] += weight_map
    for i in range(n):
        for start in range(0, len(windows), sw_batch_size):
            part = windows[start:start + sw_batch_size]
            batch = torch.cat([x[(slice(i, i + 1), slice(None), *w)] for w in part])
            question = SegmentationTarget(1, target) if mask is None else SegmentationTarget(
                1, torch.cat([mask[(slice(i, i + 1), slice(None), *w)] for w in part]))
            sal = run_method(method, net, batch, question, normalize=False, **options).detach()
            for j, w in enumerate(part):
                total[(slice(i, i + 1), slice(None), *w)] += sal[j:j + 1].float() * weight_map
    total = total / weight
    crop = tuple(slice(b, b + s) for b, s in zip(before, size))
    total = total[(slice(None), slice(None), *crop)].contiguous()
    return total / total.flatten(1).amax(1).clamp_min(1e-38).view(-1, *[1] * (total.ndim - 1))


@pytest.mark.parametrize(
    ("case", "shape", "roi_size", "kw"),
    [
        ("2d tiles, gaussian, 3 windows a pass", (1, 1, 40, 36), (16, 16),
         {"sw_batch_size": 3}),
        ("2d, two images smaller than the window, a roi", (2, 1, 14, 20), (16, 16),
         {"roi": "box", "mode": "constant"}),
        ("2d, reflect padding, border target, overlap 0.5", (1, 1, 12, 30), (16, 16),
         {"padding_mode": "reflect", "target": "border", "overlap": 0.5}),
        ("3d volume, gaussian, constant padding", (1, 1, 40, 20, 24), (24, 24, 16), {}),
    ],
)
def test_sliding_window_saliency_equals_the_hand_written_blend(case, shape, roi_size, kw):
    net = small_unet(len(shape) - 2)
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(3))
    if kw.get("roi") == "box":
        box = torch.zeros(shape[2:], dtype=torch.bool)
        box[4:10, 4:12] = True
        kw = {**kw, "roi": box[None, None]}
    ref = _old_sliding_window_saliency(net, x, "gradcam", roi_size, **kw)
    ours = sliding_window_saliency(net, x, "gradcam", roi_size, **kw)
    assert ours.shape == (*shape[:1], 1, *shape[2:]), case
    assert float(ref.max()) > 0, case
    assert torch.equal(ours, ref), case  # to the bit: the same windows, weights and sums


def test_sliding_window_3d_large_volume():
    net = small_unet(3)
    x = torch.randn(1, 1, 40, 40, 24)
    sal = sliding_window_saliency(net, x, "gradcam", (24, 24, 16))
    assert sal.shape == (1, 1, 40, 40, 24)
    assert sal.device.type == "cpu" and sal.dtype == torch.float32
    assert torch.isfinite(sal).all() and sal.min() >= 0 and sal.max() <= 1
    batched = sliding_window_saliency(net, x, "gradcam", (24, 24, 16), sw_batch_size=3)
    assert torch.allclose(sal, batched, atol=1e-5)


@pytest.mark.parametrize("method", ["gradcam", "ig"])
def test_sliding_window_of_one_window_equals_the_direct_method(method):
    net = small_unet(3)
    x = torch.randn(1, 1, 24, 24, 16)
    options = FAST[method]
    direct = explain(net, x, method, **options)
    windowed = sliding_window_saliency(net, x, method, (24, 24, 16), **options)
    assert torch.allclose(direct, windowed, atol=1e-5)


def test_sliding_window_pads_small_inputs_and_crops_back():
    net = small_unet(2)
    x = torch.randn(2, 1, 14, 20)
    roi = torch.zeros(14, 20, dtype=torch.bool)
    roi[4:10, 4:12] = True
    sal = sliding_window_saliency(net, x, "gradcam", (16, 16), mode="constant", roi=roi)
    assert sal.shape == (2, 1, 14, 20)
    assert torch.isfinite(sal).all() and sal.min() >= 0 and sal.max() <= 1


# --- faithfulness --------------------------------------------------------------------------------

def test_deletion_of_a_faithful_map_beats_random_order():
    region = region_2d()
    net = RegionNet(region)
    x = positive_input((16, 16))
    before = snapshot(net)
    sal = explain(net, x, "ig", steps=8)
    result = deletion_insertion(net, x, sal, steps=10, baseline="zero")
    assert_unchanged(net, before)
    assert np.allclose(result["fractions"], np.linspace(0, 1, 11))
    assert np.allclose(result["deletion_scores"][:, 0], 1.0)
    assert np.allclose(result["deletion_dice"][:, 0], 1.0)
    assert np.all(result["deletion_auc"] < result["random_deletion_auc"])
    assert np.all(result["insertion_auc"] > result["random_insertion_auc"])
    # All 30 region pixels are among the first 10% (26 px) / 20% (51 px) deleted.
    assert np.all(result["deletion_dice"][:, 2] == 0.0)
    with pytest.raises(ExplainError, match="shape"):
        deletion_insertion(net, x, sal[:, :, :8])


def test_energy_in_mask_exact():
    sal = torch.zeros(1, 1, 4, 4)
    sal[0, 0, 0, 0] = 3.0
    sal[0, 0, 3, 3] = 1.0
    mask = torch.zeros(4, 4, dtype=torch.bool)
    mask[:2, :2] = True
    assert energy_in_mask(sal, mask).tolist() == [0.75]
    assert energy_in_mask(torch.zeros(1, 1, 4, 4), mask).tolist() == [0.0]


def test_spearman_matches_scipy_with_ties():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    a = rng.integers(0, 5, 200).astype(float)
    b = a + rng.normal(0, 2, 200)
    assert spearman(a, b) == pytest.approx(stats.spearmanr(a, b).statistic, abs=1e-12)
    assert spearman(a, a) == pytest.approx(1.0)
    assert np.isnan(spearman(np.ones(5), np.arange(5.0)))


@pytest.mark.parametrize("method", ["gradcam", "ig"])
def test_randomisation_sanity_leaves_the_model_alone(method):
    net = small_unet(2).train()
    before = snapshot(net)
    x = torch.randn(2, 1, 16, 16)
    rng_state = torch.get_rng_state()
    result = randomisation_sanity(net, x, method, seed=3, **FAST[method])
    assert_unchanged(net, before)
    assert torch.equal(torch.get_rng_state(), rng_state)  # global RNG untouched
    rho = result["spearman"]
    assert rho.shape == (2,)
    assert np.all(np.isfinite(rho)) and np.all(np.abs(rho) <= 1)
    assert result["saliency"].shape == result["randomised_saliency"].shape == (2, 1, 16, 16)
