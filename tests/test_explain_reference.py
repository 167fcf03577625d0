"""medxai's saliency methods and metrics agree with the field's reference implementations.

* Grad-CAM, Grad-CAM++, HiResCAM and LayerCAM against pytorch-grad-cam (``grad-cam`` package) with
  its ``SemanticSegmentationTarget`` on the same 2D MONAI UNet, layer and target region
  (Grad-CAM++: at layers whose activations are >= 0, where both must agree, and at layers whose
  activations go negative, where they differ by medxai's documented rule and by that rule only). Both maps
  are min-max normalised the same way before comparing (pytorch-grad-cam scales each map to [0, 1]
  and resizes it with OpenCV; medxai resizes with torch and divides by the maximum: bilinear
  resizing commutes with the affine rescaling, so after the same min-max they must agree).
  Tolerance: 1e-4 absolute per pixel (float32 arithmetic in a different order; measured ~1e-6).
* Integrated gradients against Captum's ``IntegratedGradients`` (midpoint Riemann rule, same
  baseline, same number of steps, same target function): 1e-4 relative to the map's maximum.
* Sparseness (Gini), complexity (entropy) and relevance mass (energy in mask) against Quantus'
  ``Sparseness``, ``Complexity`` and ``RelevanceMassAccuracy`` on the same maps.

Each comparison is skipped when its reference package is not installed.
"""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
import torch
from monai.networks.nets import UNet

from medxai.explain import (
    SegmentationTarget,
    complexity,
    energy_in_mask,
    explain,
    integrated_gradients,
    resolve_layer,
    sparseness,
)


def _tiny_unet(act: str = "PRELU") -> torch.nn.Module:
    torch.manual_seed(0)
    net = UNet(spatial_dims=2, in_channels=3, out_channels=2, channels=(4, 8, 16), strides=(2, 2),
               num_res_units=1, act=act)
    return net.eval()


def _input() -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    x = torch.rand((1, 3, 32, 32), generator=g)
    x[:, :, 8:20, 10:24] -= 0.5  # a dark "lesion"
    return x


def _box() -> torch.Tensor:
    roi = torch.zeros(32, 32, dtype=torch.bool)
    roi[6:22, 8:26] = True
    return roi


def _minmax(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    a = a - a.min()
    return a / max(a.max(), 1e-12)


@pytest.fixture(scope="module")
def pgc() -> types.ModuleType:
    # pytorch-grad-cam imports torchvision at module level for image utilities (preprocessing,
    # resize for SESS, box IoU for detection targets) that these tests never call. torchvision is
    # deliberately not installed: PyPI's torchvision would replace the CPU build of torch. Minimal
    # stand-ins let the CAM code import; the real torchvision is used if it is ever present.
    try:
        import torchvision  # noqa: F401
    except ImportError:
        tv = types.ModuleType("torchvision")
        tr = types.ModuleType("torchvision.transforms")
        fn = types.ModuleType("torchvision.transforms.functional")

        class _Unavailable:
            def __init__(self, *args: object, **kwargs: object) -> None:
                raise RuntimeError("torchvision stand-in: not available in medxai's tests")

        tr.Compose = tr.Normalize = tr.ToTensor = _Unavailable  # type: ignore[attr-defined]
        fn.resize = _Unavailable  # type: ignore[attr-defined]
        tv.transforms = tr  # type: ignore[attr-defined]
        tr.functional = fn  # type: ignore[attr-defined]
        sys.modules.setdefault("torchvision", tv)
        sys.modules.setdefault("torchvision.transforms", tr)
        sys.modules.setdefault("torchvision.transforms.functional", fn)
    return pytest.importorskip("pytorch_grad_cam")


CAMS = [("gradcam", "GradCAM"), ("hirescam", "HiResCAM"), ("layercam", "LayerCAM")]


def _reference_cam(pgc_class: type, net: torch.nn.Module, layer: str, x: torch.Tensor,
                   roi: torch.Tensor) -> np.ndarray:
    from pytorch_grad_cam.utils.model_targets import SemanticSegmentationTarget

    with pgc_class(model=net, target_layers=[resolve_layer(net, layer)[1]]) as cam:
        return cam(input_tensor=x.clone(),
                   targets=[SemanticSegmentationTarget(1, roi.numpy().astype(np.float32))])[0]


def _activations(net: torch.nn.Module, layer: str, x: torch.Tensor) -> torch.Tensor:
    seen: list[torch.Tensor] = []
    handle = resolve_layer(net, layer)[1].register_forward_hook(lambda m, i, o: seen.append(o))
    with torch.no_grad():
        net(x)
    handle.remove()
    return seen[0]


@pytest.mark.parametrize("layer", ["skip.0", "bottleneck", "encoder.1"])
@pytest.mark.parametrize("ours,theirs", CAMS)
def test_cams_match_pytorch_grad_cam(pgc: types.ModuleType, ours: str, theirs: str,
                                     layer: str) -> None:
    net = _tiny_unet("RELU")
    x = _input()
    roi = _box()
    ref = _reference_cam(getattr(pgc, theirs), net, layer, x, roi)
    mine = explain(net, x, ours, layer=layer, roi=roi)[0, 0].numpy()
    assert ref.shape == mine.shape
    assert np.abs(_minmax(mine) - _minmax(ref)).max() < 1e-4


def _relu_unet_without_residuals() -> torch.nn.Module:
    """A 2D UNet whose blocks end in a ReLU (no residual units): every encoder, skip and
    bottleneck output is >= 0, as Grad-CAM++'s derivation assumes. Its last layer is scaled by
    100, so that the gradients are large against the ``eps = 1e-6`` that pytorch-grad-cam adds to
    the coefficients' denominator (at scale 1 that eps alone moved the maps by up to 4e-4)."""
    torch.manual_seed(0)
    net = UNet(spatial_dims=2, in_channels=3, out_channels=2, channels=(4, 8, 16), strides=(2, 2),
               num_res_units=0, act="RELU").eval()
    with torch.no_grad():
        net.model[2].conv.weight.mul_(100.0)
        net.model[2].conv.bias.mul_(100.0)
    return net


@pytest.mark.parametrize("layer", ["encoder.0", "encoder.1", "skip.0", "skip.1", "bottleneck",
                                   "decoder.1"])
def test_gradcampp_matches_pytorch_grad_cam_where_activations_are_non_negative(
        pgc: types.ModuleType, layer: str) -> None:
    net = _relu_unet_without_residuals()
    x = _input()
    roi = _box()
    acts = _activations(net, layer, x)
    assert float(acts.min()) == 0.0 and float(acts.max()) > 0  # after a ReLU, not all zero
    ref = _reference_cam(pgc.GradCAMPlusPlus, net, layer, x, roi)
    mine = explain(net, x, "gradcampp", layer=layer, roi=roi)[0, 0].numpy()
    assert ref.shape == mine.shape and float(np.ptp(ref)) > 0
    assert np.abs(_minmax(mine) - _minmax(ref)).max() < 1e-4


@pytest.mark.parametrize("layer,differs", [("bottleneck", True), ("skip.1", True),
                                           ("skip.0", False), ("encoder.1", False)])
def test_gradcampp_where_activations_go_negative_differs_as_documented(
        pgc: types.ModuleType, layer: str, differs: bool) -> None:
    """MONAI's default UNet (PReLU, residual units) has negative activations at every layer.
    Where a positive gradient meets a negative denominator ``2 g^2 + sum(A) g^3`` (bottleneck,
    skip.1 here), medxai sets that coefficient to 0 and pytorch-grad-cam keeps it: the maps
    differ, and agree once that one rule is applied to pytorch-grad-cam's own coefficients (its
    Grad-CAM++ class otherwise unchanged). Where no denominator turns negative (skip.0,
    encoder.1) negative activations alone change nothing: the maps agree."""
    net = _tiny_unet("PRELU")
    with torch.no_grad():  # large gradients, as above: pytorch-grad-cam's eps plays no part
        net.model[2][0].conv.weight.mul_(100.0)
        net.model[2][1].conv.unit0.conv.weight.mul_(100.0)
        net.model[2][1].conv.unit0.conv.bias.mul_(100.0)
    x = _input()
    roi = _box()
    assert float(_activations(net, layer, x).min()) < 0
    ruled_out: list[int] = []

    class ZeroNegativeDenominators(pgc.GradCAMPlusPlus):  # type: ignore[name-defined]
        def get_cam_weights(self, input_tensor, target_layers, target_category, activations,
                            grads):
            axes = tuple(range(2, activations.ndim))
            sum_a = activations.sum(axis=axes, keepdims=True)
            denom = 2 * grads**2 + sum_a * grads**3
            ruled_out.append(int(((denom <= 0) & (grads > 0)).sum()))
            grads = np.where(denom > 0, grads, 0)  # its alpha is 0 where grads == 0
            return super().get_cam_weights(input_tensor, target_layers, target_category,
                                           activations, grads)

    mine = _minmax(explain(net, x, "gradcampp", layer=layer, roi=roi)[0, 0].numpy())
    ref = _minmax(_reference_cam(pgc.GradCAMPlusPlus, net, layer, x, roi))
    ruled = _minmax(_reference_cam(ZeroNegativeDenominators, net, layer, x, roi))
    assert np.abs(mine - ruled).max() < 1e-4
    assert (ruled_out[0] > 0) == differs
    if differs:
        assert np.abs(mine - ref).max() > 0.5  # measured 1.0 at both layers
    else:
        assert np.abs(mine - ref).max() < 1e-4


def test_layer_aggregation_matches_pytorch_grad_cam(pgc: types.ModuleType) -> None:
    from pytorch_grad_cam.utils.model_targets import SemanticSegmentationTarget

    net = _tiny_unet("RELU")
    x = _input()
    layers = ["encoder.0", "encoder.1", "bottleneck"]
    modules = [resolve_layer(net, name)[1] for name in layers]
    with pgc.LayerCAM(model=net, target_layers=modules) as cam:
        ref = cam(input_tensor=x.clone(),
                  targets=[SemanticSegmentationTarget(1, _box().numpy().astype(np.float32))])[0]
    mine = explain(net, x, "layercam", layer=layers, roi=_box())[0, 0].numpy()
    # Both min-max scale each layer's map at its own resolution, upsample and average.
    assert np.abs(_minmax(mine) - _minmax(ref)).max() < 1e-4


def test_prelu_gradcam_and_hirescam_match_too(pgc: types.ModuleType) -> None:
    from pytorch_grad_cam.utils.model_targets import SemanticSegmentationTarget

    net = _tiny_unet("PRELU")
    x = _input()
    with torch.no_grad():
        mask = net(x).argmax(1)[0] == 1
    if not mask.any():
        mask = _box()
    for ours, theirs in CAMS[:2]:
        with getattr(pgc, theirs)(model=net, target_layers=[resolve_layer(net, "skip.0")[1]]) as c:
            ref = c(input_tensor=x.clone(),
                    targets=[SemanticSegmentationTarget(1, mask.numpy().astype(np.float32))])[0]
        mine = explain(net, x, ours, roi=mask)[0, 0].numpy()
        assert np.abs(_minmax(mine) - _minmax(ref)).max() < 1e-4, ours


def test_integrated_gradients_match_captum() -> None:
    captum_attr = pytest.importorskip("captum.attr")
    net = _tiny_unet()
    x = _input()
    roi = _box()
    target = SegmentationTarget(1, roi)
    mine = integrated_gradients(net, x, target, steps=8, baseline="zero", normalize=False)
    ig = captum_attr.IntegratedGradients(lambda inp: target(net(inp)))
    with torch.enable_grad():
        attr = ig.attribute(x.clone(), baselines=torch.zeros_like(x), n_steps=8,
                            method="riemann_middle")
    theirs = attr.sum(dim=1, keepdim=True).abs().detach()
    assert torch.allclose(mine, theirs, atol=1e-4 * float(theirs.max()), rtol=0)


def test_complexity_and_localisation_metrics_match_quantus() -> None:
    quantus = pytest.importorskip("quantus")
    net = _tiny_unet()
    x = _input()
    maps = torch.cat([explain(net, x, "gradcam", roi=_box()),
                      explain(net, x, "hirescam", roi=_box()),
                      torch.rand((1, 1, 32, 32), generator=torch.Generator().manual_seed(3))])
    xs = x.repeat(3, 1, 1, 1).numpy()
    a = maps.numpy()
    y = np.ones(3, dtype=int)
    mask = _box()[None, None].repeat(3, 1, 1, 1).numpy().astype(np.float32)
    kwargs = dict(disable_warnings=True, display_progressbar=False)
    ref_sparse = np.asarray(quantus.Sparseness(**kwargs)(
        model=None, x_batch=xs, y_batch=y, a_batch=a.copy(), channel_first=True))
    ref_complex = np.asarray(quantus.Complexity(**kwargs)(
        model=None, x_batch=xs, y_batch=y, a_batch=a.copy(), channel_first=True))
    ref_mass = np.asarray(quantus.RelevanceMassAccuracy(**kwargs)(
        model=None, x_batch=xs, y_batch=y, a_batch=a.copy(), s_batch=mask, channel_first=True))
    np.testing.assert_allclose(sparseness(maps), ref_sparse, atol=1e-6)
    np.testing.assert_allclose(complexity(maps), ref_complex, atol=1e-5)
    np.testing.assert_allclose(energy_in_mask(maps, torch.from_numpy(mask > 0)).numpy(), ref_mass,
                               atol=1e-5)
