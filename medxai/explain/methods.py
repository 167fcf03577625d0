"""Saliency methods for segmentation networks, 2D and 3D.

Every method has the form ``method(net, x, target, **options) -> saliency`` where

* ``net`` maps ``(N, C_in, *spatial)`` to logits ``(N, K, *spatial)``;
* ``x`` is a batch ``(N, C_in, H, W)`` or ``(N, C_in, H, W, D)`` on the device of ``net``;
* ``target`` is a :class:`~medxai.explain.targets.SegmentationTarget` or a class label (int);
* the saliency is ``(N, 1, *spatial)`` float32 on ``x``'s device and grid, non-negative, and
  divided by its maximum per sample (so in ``[0, 1]``; an all-zero map stays zero, e.g. when the
  model predicts nothing of the label). ``normalize=False`` keeps the raw non-negative values,
  which are comparable across windows of one image (:mod:`medxai.explain.sliding` uses that).

The network runs in eval mode with parameter gradients off during the computation, and is given
back as it was (:func:`medxai.explain.hooks.frozen_model`); autograd is enabled only where a method
needs gradients.
"""

from __future__ import annotations

import difflib
import inspect
import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from medxai.errors import ExplainError
from medxai.explain._common import (
    chunks,
    forward,
    make_baseline,
    normalise,
    per_dim,
    prepare_input,
    upsample,
)
from medxai.explain.hooks import capture_layers, frozen_model, layer_gradients
from medxai.explain.targets import SegmentationTarget, as_target

__all__ = [
    "seg_grad_cam",
    "grad_cam_pp",
    "hires_cam",
    "layer_cam",
    "smooth_grad",
    "occlusion",
    "integrated_gradients",
    "KeptForward",
    "METHODS",
    "get_method",
    "run_method",
]

SaliencyMethod = Callable[..., torch.Tensor]


# --- CAM family --------------------------------------------------------------------------------


def _gradcam_weights(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    """Grad-CAM channel weights ``(N, C_l)``: the spatial mean of the gradients."""
    return gradients.flatten(2).mean(dim=2)


def _gradcampp_weights(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    """Grad-CAM++ channel weights ``(N, C_l)`` (Chattopadhay et al. 2018, eq. 19).

    With the score passed through ``exp``, the second and third derivatives become powers of the
    first, so ``alpha = g^2 / (2 g^2 + sum(A) g^3)`` and ``w = sum(alpha * relu(g))`` over space.
    The paper assumes ReLU activations (``A >= 0``), where ``alpha >= 0`` for ``g > 0``; with
    activations that may be negative (MONAI's default PReLU) the denominator can turn negative,
    and such ``alpha`` are set to 0 instead of flipping the sign of the evidence.
    """
    g = gradients.flatten(2)
    g2 = g * g
    g3 = g2 * g
    sum_a = activations.flatten(2).sum(dim=2, keepdim=True)
    denom = 2 * g2 + sum_a * g3
    keep = (g > 0) & (denom > 0)
    alpha = torch.where(
        keep, g2 / torch.where(keep, denom, torch.ones_like(denom)), torch.zeros_like(g)
    )
    return (alpha * g).sum(dim=2)


def _weighted(
    weigh: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """A combiner ``sum_k w_k A_k`` from a channel-weight function ``w = weigh(A, g)``."""

    def combine(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
        weights = weigh(activations, gradients)
        shape = (*weights.shape, *([1] * (activations.ndim - 2)))
        return (weights.view(shape) * activations).sum(dim=1, keepdim=True)

    return combine


def _hirescam(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    """HiResCAM (Draelos and Carin 2020): ``sum_k g_k * A_k`` element-wise (no spatial mean)."""
    return (gradients * activations).sum(dim=1, keepdim=True)


def _layercam(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    """LayerCAM (Jiang et al. 2021): ``sum_k relu(g_k) * A_k`` element-wise."""
    return (torch.relu(gradients) * activations).sum(dim=1, keepdim=True)


def _minmax(maps: torch.Tensor) -> torch.Tensor:
    """Scale each sample's map to [0, 1] (minimum to 0, maximum to 1; a constant map to 0)."""
    flat = maps.flatten(1)
    low = flat.amin(dim=1).view(-1, *([1] * (maps.ndim - 1)))
    span = (flat.amax(dim=1) - flat.amin(dim=1)).view(-1, *([1] * (maps.ndim - 1)))
    return (maps - low) / span.clamp_min(1e-7)


def _cam(
    net: nn.Module,
    x: torch.Tensor,
    target: SegmentationTarget | int,
    layer: Any,
    combine: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    normalize: bool,
) -> torch.Tensor:
    """``relu(combine(A, dS/dA))`` at each layer, upsampled to the input grid.

    One forward and one backward pass, whatever the number of layers. With several layers each
    layer's map is min-max scaled to [0, 1] per sample at the layer's own resolution, upsampled,
    and the maps are averaged (layer scales differ by orders of magnitude; this is
    pytorch-grad-cam's aggregation, which the reference tests check).
    """
    x = prepare_input(x)
    target = as_target(target)
    with capture_layers(net, layer) as captures, torch.enable_grad():
        # The parameters do not require gradients here, so the input does: that makes the
        # layers' activations part of a graph we can differentiate.
        logits = forward(net, x.clone().requires_grad_(True))
        score = target(logits)
        gradients = [g.detach() for g in layer_gradients(captures, score)]
        activations = [c.activations.detach() for c in captures]  # type: ignore[union-attr]
        names = [c.name for c in captures]
    return _cam_maps(x.shape, names, activations, gradients, combine, normalize)


def _cam_maps(
    shape: Sequence[int],
    names: list[str],
    activations: list[torch.Tensor],
    gradients: list[torch.Tensor],
    combine: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    normalize: bool,
) -> torch.Tensor:
    """The CAM maps of :func:`_cam` from the layers' activations and gradients, for an input of
    ``shape`` ``(N, C, *spatial)``."""
    shape = tuple(int(v) for v in shape)
    spatial = shape[2:]
    maps = []
    for name, act, grad in zip(names, activations, gradients):
        if act.ndim != len(shape) or act.shape[0] != shape[0]:
            raise ExplainError(
                f"layer {name!r} outputs shape {tuple(act.shape)}, not a feature "
                f"map (N, C, *spatial) for input {shape}",
                hint="choose a convolution or a block of convolutions",
            )
        cam = torch.relu(combine(act.float(), grad.float()))
        if len(names) > 1:
            cam = _minmax(cam)
        maps.append(upsample(cam, spatial))
    cam = maps[0] if len(maps) == 1 else torch.stack(maps).mean(dim=0)
    return normalise(cam) if normalize else cam


def _graph_starts_here(mod: nn.Module, inputs: tuple[object, ...], output: object) -> object:
    """A forward hook that makes a layer's output the start of the autograd graph when nothing
    before it is recorded: a copy of it that requires gradients (a copy, so that an in-place
    operation after the layer stays allowed). Other outputs are left as they are."""
    if isinstance(output, torch.Tensor) and not output.requires_grad:
        return output.detach().requires_grad_(True).clone()
    return None


class KeptForward:
    """One forward pass of a network with the CAM layers' activations kept, so that the CAM maps
    of any label and target come from backward passes alone.

    Called as the network (``kept(x)`` gives the logits, detached), it runs ``net`` once on
    ``x`` with gradients on, outside any ``torch.inference_mode()`` of the caller, the layers
    hooked as :func:`seg_grad_cam` hooks them: the prediction's identity test-time augmentation
    view (:func:`medxai.inference.predict`, ``identity_forward=``) then serves the saliency
    too. :meth:`saliency` gives the same maps as the method run on the same ``x``.
    """

    def __init__(self, net: nn.Module, layer: Any = None) -> None:
        self.net = net
        self.layer = layer
        self.shape: tuple[int, ...] | None = None
        self._logits: torch.Tensor | None = None
        self._names: list[str] = []
        self._activations: list[torch.Tensor] = []
        #: maps already computed from this pass, by the caller's key (e.g. the label)
        self.maps: dict[Any, torch.Tensor] = {}

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(False):
            x = prepare_input(x.clone())  # a tensor made in inference mode cannot enter a graph
            with capture_layers(self.net, self.layer) as captures, torch.enable_grad():
                # the graph starts at the hooked layers: what runs before them is not recorded
                # (the maps need the gradients from the score back to the layers only)
                starts = [
                    c.module.register_forward_hook(_graph_starts_here, prepend=True)
                    for c in captures
                ]
                try:
                    self._logits = forward(self.net, x)
                finally:
                    for h in starts:
                        h.remove()
                self._names = [c.name for c in captures]
                self._activations = [c.activations for c in captures]  # type: ignore[misc]
        self.shape = tuple(x.shape)
        return self._logits.detach()

    @property
    def ran(self) -> bool:
        """Whether the forward pass ran (and its graph is still kept)."""
        return self._logits is not None

    def saliency(
        self, method: str, target: SegmentationTarget | int, normalize: bool = True
    ) -> torch.Tensor:
        """``(N, 1, *spatial)`` maps of ``method`` (a name of :data:`CAM_METHODS`) for ``target``,
        from the kept forward pass: one backward pass (the graph is kept for the next call)."""
        if self._logits is None or self.shape is None:
            raise ExplainError("the kept forward pass has not run (or was released)")
        combine = _CAM_COMBINE[method]
        with torch.enable_grad():
            score = as_target(target)(self._logits)
            for name, act in zip(self._names, self._activations):
                if act is None or not act.requires_grad:
                    raise ExplainError(
                        f"cannot differentiate the target with respect to layer {name!r}",
                        hint="choose a layer on the path to the output",
                    )
            grads = torch.autograd.grad(
                score.sum(), self._activations, retain_graph=True, allow_unused=True
            )
        for name, g in zip(self._names, grads):
            if g is None:
                raise ExplainError(
                    f"the target does not depend on layer {name!r}",
                    hint="choose a layer on the path to the output",
                )
        acts = [a.detach() for a in self._activations]
        return _cam_maps(
            self.shape, self._names, acts, [g.detach() for g in grads], combine, normalize
        )

    def release(self) -> None:
        """Drop the kept graph (activations and logits)."""
        self._logits = None
        self._activations = []
        self.maps = {}


_CAM_ARGS = """
    Args:
        net: segmentation network, logits ``(N, K, *spatial)``.
        x: ``(N, C, H, W[, D])``.
        target: what to explain (:class:`SegmentationTarget`; a label means its predicted region).
        layer: a layer name, role alias (``encoder.2``, ``bottleneck``...), module, or several
            (list, comma-separated string, or a group alias such as ``encoder``); default
            :func:`medxai.explain.layers.default_target_layer`.
        normalize: divide by the per-sample maximum.

    Returns:
        ``(N, 1, H, W[, D])`` float32, non-negative.
"""


def seg_grad_cam(
    net: nn.Module,
    x: torch.Tensor,
    target: SegmentationTarget | int = 1,
    *,
    layer: Any = None,
    normalize: bool = True,
) -> torch.Tensor:
    return _cam(net, x, target, layer, _weighted(_gradcam_weights), normalize)


seg_grad_cam.__doc__ = (
    """Seg-Grad-CAM (Vinogradova et al. 2020): Grad-CAM of a segmentation target.

    Channel weights are the spatial mean of the target's gradient with respect to the layer's
    activations; the map is ``relu(sum_k w_k A_k)``, upsampled (bi/trilinear) to the input grid.
"""
    + _CAM_ARGS
)


def grad_cam_pp(
    net: nn.Module,
    x: torch.Tensor,
    target: SegmentationTarget | int = 1,
    *,
    layer: Any = None,
    normalize: bool = True,
) -> torch.Tensor:
    return _cam(net, x, target, layer, _weighted(_gradcampp_weights), normalize)


grad_cam_pp.__doc__ = (
    """Grad-CAM++ (Chattopadhay et al. 2018) of a segmentation target.

    Like :func:`seg_grad_cam`, with each channel weighted by the positive gradients times the
    pixel-wise coefficients ``alpha`` (exponential-score approximation).
"""
    + _CAM_ARGS
)


def hires_cam(
    net: nn.Module,
    x: torch.Tensor,
    target: SegmentationTarget | int = 1,
    *,
    layer: Any = None,
    normalize: bool = True,
) -> torch.Tensor:
    return _cam(net, x, target, layer, _hirescam, normalize)


hires_cam.__doc__ = (
    """HiResCAM (Draelos and Carin 2020): ``relu(sum_k dS/dA_k * A_k)`` per pixel.

    Unlike Grad-CAM the gradients are not averaged over space, so the map is the exact first-order
    contribution of each location of the layer to the score (for a segmentation target this is
    what Seg-XRes-CAM builds on).
"""
    + _CAM_ARGS
)


def layer_cam(
    net: nn.Module,
    x: torch.Tensor,
    target: SegmentationTarget | int = 1,
    *,
    layer: Any = None,
    normalize: bool = True,
) -> torch.Tensor:
    return _cam(net, x, target, layer, _layercam, normalize)


layer_cam.__doc__ = (
    """LayerCAM (Jiang et al. 2021): ``relu(sum_k relu(dS/dA_k) * A_k)`` per pixel.

    Meant for several layers at once (``layer="encoder"`` or a list): each layer's map is scaled
    to [0, 1] (min-max) and the maps are averaged, so shallow layers add detail and deep ones add
    context (any CAM method accepts several layers the same way).
"""
    + _CAM_ARGS
)


# --- perturbation ------------------------------------------------------------------------------


def _starts(size: int, patch: int, stride: int) -> list[int]:
    """Patch origins along one axis covering ``[0, size)``, the last one flush with the end."""
    starts = list(range(0, size - patch + 1, stride))
    if starts[-1] + patch < size:
        starts.append(size - patch)
    return starts


def occlusion(
    net: nn.Module,
    x: torch.Tensor,
    target: SegmentationTarget | int = 1,
    *,
    patch_size: int | Sequence[int] | None = None,
    stride: int | Sequence[int] | None = None,
    fill: str | float = "mean",
    batch_size: int = 16,
    normalize: bool = True,
) -> torch.Tensor:
    """Occlusion sensitivity: how much the target drops when a patch of the input is hidden.

    A patch (all channels) is replaced by ``fill`` at every position of a grid with ``stride``;
    each occluded image is scored over the region of the *unoccluded* input. A pixel's saliency is
    the mean drop ``score(x) - score(occluded)`` over the patches that cover it, clipped at 0
    (only evidence for the label is shown). No gradients are used.

    Cost: one forward pass per patch position (``prod(ceil((S - P) / stride) + 1)`` per sample).

    Args:
        patch_size: patch side in pixels, one int or one per spatial axis; default 1/8 of each
            side (at least 1).
        stride: step between patches; default half the patch (at least 1).
        fill: ``"mean"`` (the sample's per-channel mean), ``"zero"``, or a number.
        batch_size: occluded images per forward pass.

    Returns:
        ``(N, 1, *spatial)`` float32.
    """
    x = prepare_input(x)
    target = as_target(target)
    spatial = tuple(x.shape[2:])
    nd = len(spatial)
    if patch_size is None:
        patch = tuple(max(1, math.ceil(s / 8)) for s in spatial)
    else:
        patch = tuple(min(p, s) for p, s in zip(per_dim(patch_size, nd, "patch_size"), spatial))
    if stride is None:
        steps = tuple(max(1, p // 2) for p in patch)
    else:
        steps = per_dim(stride, nd, "stride")
    is_number = isinstance(fill, (int, float)) and not isinstance(fill, bool)
    if not is_number and fill not in ("mean", "zero"):
        raise ExplainError(
            f"unknown occlusion fill {fill!r}", hint="use 'mean', 'zero' or a number"
        )
    fill_values = make_baseline(x, fill).flatten(2)[:, :, :1]  # (N, C, 1): constant per channel
    windows = [
        tuple(slice(o, o + p) for o, p in zip(origin, patch))
        for origin in itertools.product(
            *(_starts(s, p, st) for s, p, st in zip(spatial, patch, steps))
        )
    ]
    drops = torch.zeros((x.shape[0], 1, *spatial), dtype=torch.float32, device=x.device)
    counts = torch.zeros(spatial, dtype=torch.float32, device=x.device)
    for window in windows:
        counts[window] += 1
    with frozen_model(net), torch.no_grad():
        logits = forward(net, x)
        fixed = target.frozen(logits)
        reference = fixed(logits).float()
        for i in range(x.shape[0]):
            sample_target = fixed.sample(i)
            fill_i = fill_values[i].view(-1, *([1] * nd))
            for part in chunks(len(windows), batch_size):
                batch = x[i : i + 1].repeat(len(part), *([1] * (nd + 1)))
                for j, w in enumerate(part):
                    cut: tuple[int | slice, ...] = (j, slice(None), *windows[w])
                    batch[cut] = fill_i
                scores = sample_target(forward(net, batch)).float()
                for j, w in enumerate(part):
                    where: tuple[int | slice, ...] = (i, 0, *windows[w])
                    drops[where] += reference[i] - scores[j]
    saliency = (drops / counts).clamp_min(0)
    return normalise(saliency) if normalize else saliency


# --- gradients ---------------------------------------------------------------------------------


def integrated_gradients(
    net: nn.Module,
    x: torch.Tensor,
    target: SegmentationTarget | int = 1,
    *,
    steps: int = 32,
    baseline: str | float | torch.Tensor = "zero",
    blur_sigma: float | None = None,
    batch_size: int = 16,
    normalize: bool = True,
) -> torch.Tensor:
    """Integrated gradients (Sundararajan et al. 2017) of a segmentation target.

    ``IG = (x - b) * mean_k grad S(b + a_k (x - b))`` with midpoints ``a_k = (k + 1/2) / steps``;
    the map is ``|sum over channels of IG|``. The target's region is fixed to that of ``x`` for
    every interpolated image.

    Args:
        steps: number of points on the path (Riemann midpoint rule).
        baseline: ``"zero"``, ``"blur"`` (Gaussian blur of ``x``), ``"mean"``, a number or a tensor.
        blur_sigma: blur in pixels for ``baseline="blur"`` (default 1/16 of the smallest side).
        batch_size: path points per forward/backward pass.

    Returns:
        ``(N, 1, *spatial)`` float32.
    """
    # Kept here, not captum's IntegratedGradients: captum is a test extra, not a runtime
    # dependency; tests/test_explain_reference.py checks this against captum (to 1e-4).
    x = prepare_input(x)
    target = as_target(target)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ExplainError(f"steps must be a positive integer, got {steps!r}")
    base = make_baseline(x, baseline, blur_sigma)
    nd = x.ndim - 2
    alphas = (torch.arange(steps, dtype=torch.float32, device=x.device) + 0.5) / steps
    total = torch.zeros_like(x, dtype=torch.float32)
    with frozen_model(net):
        with torch.no_grad():
            fixed = target.frozen(forward(net, x))
        for i in range(x.shape[0]):
            sample_target = fixed.sample(i)
            diff = x[i : i + 1] - base[i : i + 1]
            for part in chunks(steps, batch_size):
                a = alphas[part.start : part.stop].to(x.dtype).view(-1, 1, *([1] * nd))
                with torch.enable_grad():
                    path = (base[i : i + 1] + a * diff).requires_grad_(True)
                    score = sample_target(forward(net, path))
                    (grad,) = torch.autograd.grad(score.sum(), path)
                total[i] += grad.float().sum(dim=0)
    attributions = (x - base).float() * total / steps
    saliency = attributions.sum(dim=1, keepdim=True).abs()
    return normalise(saliency) if normalize else saliency


def smooth_grad(
    net: nn.Module,
    x: torch.Tensor,
    target: SegmentationTarget | int = 1,
    *,
    samples: int = 8,
    noise: float = 0.1,
    batch_size: int = 8,
    seed: int = 0,
    normalize: bool = True,
) -> torch.Tensor:
    """SmoothGrad (Smilkov et al. 2017): input gradients averaged over noisy copies of ``x``.

    ``samples`` copies ``x + N(0, (noise * (max(x) - min(x)))^2)`` (per sample, drawn from a private
    generator seeded with ``seed``; the global RNG is untouched) are scored over the region of the
    unaltered input, ``batch_size`` copies per forward/backward pass; the map is
    ``sum over channels of mean_k |dS/dx(x_k)|``. Cost: ``samples`` forward and backward passes
    (one batched pass when ``batch_size >= samples``).

    Args:
        samples: number of noisy copies (>= 1).
        noise: noise standard deviation as a fraction of the sample's intensity range (>= 0).
        batch_size: noisy copies per pass.
        seed: noise seed.

    Returns:
        ``(N, 1, *spatial)`` float32.
    """
    x = prepare_input(x)
    target = as_target(target)
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ExplainError(f"samples must be a positive integer, got {samples!r}")
    if not float(noise) >= 0:
        raise ExplainError(f"noise must be a non-negative fraction of the range, got {noise!r}")
    generator = torch.Generator(device="cpu").manual_seed(int(seed))
    total = torch.zeros((x.shape[0], 1, *x.shape[2:]), dtype=torch.float32, device=x.device)
    with frozen_model(net):
        with torch.no_grad():
            fixed = target.frozen(forward(net, x))
        for i in range(x.shape[0]):
            sample_target = fixed.sample(i)
            xi = x[i : i + 1]
            sigma = float(noise) * float(xi.max() - xi.min())
            for part in chunks(samples, batch_size):
                eps = torch.randn((len(part), *xi.shape[1:]), generator=generator)
                with torch.enable_grad():
                    noisy = xi + sigma * eps.to(device=x.device, dtype=x.dtype)
                    noisy.requires_grad_(True)
                    score = sample_target(forward(net, noisy))
                    (grad,) = torch.autograd.grad(score.sum(), noisy)
                total[i] += grad.float().abs().sum(dim=1).sum(dim=0)[None]
    saliency = total / samples
    return normalise(saliency) if normalize else saliency


# --- registry ----------------------------------------------------------------------------------

#: Saliency methods by the name the CLI and :func:`medxai.explain.explain` accept.
METHODS: dict[str, SaliencyMethod] = {
    "gradcam": seg_grad_cam,
    "gradcampp": grad_cam_pp,
    "hirescam": hires_cam,
    "layercam": layer_cam,
    "smoothgrad": smooth_grad,
    "occlusion": occlusion,
    "ig": integrated_gradients,
}

#: Methods that read a layer (take ``layer=``; refused by networks without module structure).
CAM_METHODS = ("gradcam", "gradcampp", "hirescam", "layercam")

#: how each CAM method combines a layer's activations and gradients (:func:`_cam`)
_CAM_COMBINE: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "gradcam": _weighted(_gradcam_weights),
    "gradcampp": _weighted(_gradcampp_weights),
    "hirescam": _hirescam,
    "layercam": _layercam,
}


def get_method(name: str | SaliencyMethod) -> SaliencyMethod:
    """The method registered as ``name`` in :data:`METHODS` (a callable is returned as is).

    Raises:
        ExplainError: unknown name; the message suggests the closest registered names.
    """
    if callable(name):
        return name
    key = str(name).strip().lower().replace("-", "").replace("_", "").replace("+", "p")
    if key in METHODS:
        return METHODS[key]
    close = difflib.get_close_matches(str(name).lower(), list(METHODS), n=2, cutoff=0.4)
    hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
    raise ExplainError(
        f"unknown saliency method {name!r}", hint=f"{hint}methods: {', '.join(METHODS)}"
    )


def run_method(
    method: str | SaliencyMethod,
    net: nn.Module,
    x: torch.Tensor,
    target: SegmentationTarget | int,
    **options: Any,
) -> torch.Tensor:
    """Call ``method`` after checking that it accepts ``options`` (else :class:`ExplainError`)."""
    fn = get_method(method)
    try:
        inspect.signature(fn).bind(net, x, target, **options)
    except TypeError as exc:
        accepted = [
            p.name
            for p in inspect.signature(fn).parameters.values()
            if p.kind is inspect.Parameter.KEYWORD_ONLY
        ]
        name = getattr(fn, "__name__", repr(fn))
        raise ExplainError(
            f"{name} does not accept options {sorted(options)}: {exc}",
            hint=f"its options are: {', '.join(accepted) or 'none'}",
        ) from exc
    return fn(net, x, target, **options)
