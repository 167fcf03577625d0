"""Saliency for images and volumes too large for one forward pass, window by window.

MONAI's own ``sliding_window_inference`` (``with_coord=True``) lays the windows out, pads, batches
and blends: the predictor it calls runs the saliency method on each batch of windows, so each
window is the very input the network saw when the segmentation was predicted (same padding, scan
interval and importance weights as the inference path). Each window is explained on its own, as the
network saw it: its target region is the window's own prediction (or the part of the user's ROI
inside it, cut with the window coordinates MONAI passes along). Raw (unnormalised) window maps are
blended with the importance weights into a CPU buffer and the blend is normalised once at the
end, so a window with a weak, small prediction does not shine as brightly as one with a large,
confident one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from monai.inferers import sliding_window_inference
from monai.utils import fall_back_tuple
from torch import nn

from medxai.errors import ExplainError
from medxai.explain._common import normalise, prepare_input
from medxai.explain.methods import SaliencyMethod, get_method, run_method
from medxai.explain.targets import SegmentationTarget, _broadcast_roi, make_target

__all__ = ["sliding_window_saliency"]

BLEND_MODES = ("constant", "gaussian")
PAD_MODES = ("constant", "reflect", "replicate", "circular")


def sliding_window_saliency(
    net: nn.Module,
    x: torch.Tensor,
    method: str | SaliencyMethod,
    roi_size: int | Sequence[int],
    overlap: float | Sequence[float] = 0.25,
    mode: str = "gaussian",
    sw_batch_size: int = 1,
    target_label: int = 1,
    *,
    roi: torch.Tensor | None = None,
    target: str | SegmentationTarget | None = None,
    sigma_scale: float | Sequence[float] = 0.125,
    padding_mode: str = "constant",
    cval: float = 0.0,
    sw_device: torch.device | str | None = None,
    normalize: bool = True,
    **options: Any,
) -> torch.Tensor:
    """Saliency of a large image or volume computed window by window and blended.

    Args:
        net: segmentation network on ``sw_device``, logits ``(N, K, *roi_size)`` per window.
        x: ``(N, C, H, W)`` or ``(N, C, H, W, D)``; may stay on the CPU while windows run on the
            GPU (``sw_device``).
        method: a name in :data:`medxai.explain.METHODS` or a method callable (which must accept
            ``normalize=False`` and return raw maps comparable across windows).
        roi_size: window size in pixels (voxels) per spatial axis; non-positive entries take the
            image's size (as in MONAI).
        overlap: fraction of a window shared with its neighbour, per axis or for all, in [0, 1).
        mode: blending weights, ``"gaussian"`` or ``"constant"`` (MONAI ``BlendMode``).
        sw_batch_size: windows explained together (a batch of ``sw_batch_size`` windows is on the
            device at a time).
        target_label: the class to explain.
        roi: optional boolean region of interest on the input grid, ``(*spatial)``,
            ``(1, *spatial)`` or ``(N, 1, *spatial)``; each window scores the ROI part inside it
            instead of its own prediction.
        target: the question asked, a region name (``segment``, ``border``, ``missed``,
            ``image``) or a :class:`SegmentationTarget` (a tensor region of it is a ROI on the
            input grid); named regions are computed per window from the window's own logits.
        sigma_scale: Gaussian window sigma as a fraction of the window size (MONAI's default).
        padding_mode, cval: how the input is padded when smaller than a window (MONAI's options).
        sw_device: device of the windows (default: ``x``'s device).
        normalize: divide the blended map by its per-sample maximum.
        options: passed to the method (e.g. ``layer=``, ``steps=``).

    Returns:
        ``(N, 1, H, W[, D])`` float32 on the CPU, non-negative, in [0, 1] when ``normalize``.

    Raises:
        ExplainError: bad sizes or options, or anything the method raises.
    """
    x = prepare_input(x)
    fn = get_method(method)
    _check_options(mode, padding_mode, sw_batch_size, overlap, x.ndim - 2, options)
    n = x.shape[0]
    image_size = tuple(int(s) for s in x.shape[2:])
    roi_size = _roi_size(roi_size, image_size)
    device = torch.device(sw_device) if sw_device is not None else x.device
    base_target, roi = _base_target(target, target_label, roi)
    roi_mask = (
        _padded_roi(_broadcast_roi(roi, n, image_size), roi_size) if roi is not None else None
    )

    def explain_windows(windows: torch.Tensor, coords: Sequence[Sequence[slice]]) -> torch.Tensor:
        window_target = base_target
        if roi_mask is not None:  # the ROI inside each window (MONAI's coordinates, padded grid)
            region = torch.cat([roi_mask[tuple(c)] for c in coords]).to(device)
            window_target = base_target.with_region(region)
        saliency = run_method(fn, net, windows, window_target, normalize=False, **options)
        return saliency.detach().to(device, torch.float32)

    total = sliding_window_inference(
        x,
        roi_size=roi_size,
        sw_batch_size=sw_batch_size,
        predictor=explain_windows,
        overlap=overlap,
        mode=mode,
        sigma_scale=sigma_scale,
        padding_mode=padding_mode,
        cval=cval,
        sw_device=device,
        device=torch.device("cpu"),
        with_coord=True,
    )
    assert isinstance(total, torch.Tensor)  # one output: the map
    total = total.as_subclass(torch.Tensor).float()
    return normalise(total) if normalize else total


def _check_options(
    mode: str,
    padding_mode: str,
    sw_batch_size: int,
    overlap: float | Sequence[float],
    nd: int,
    options: dict[str, Any],
) -> None:
    if mode not in BLEND_MODES:
        raise ExplainError(f"unknown blend mode {mode!r}", hint=f"use one of {BLEND_MODES}")
    if padding_mode not in PAD_MODES:
        raise ExplainError(f"unknown padding mode {padding_mode!r}", hint=f"use one of {PAD_MODES}")
    if isinstance(sw_batch_size, bool) or not isinstance(sw_batch_size, int) or sw_batch_size < 1:
        raise ExplainError(f"sw_batch_size must be a positive integer, got {sw_batch_size!r}")
    if "normalize" in options:
        raise ExplainError("pass normalize to sliding_window_saliency, not to the method")
    overlaps = (overlap,) * nd if isinstance(overlap, (int, float)) else tuple(overlap)
    if len(overlaps) != nd or not all(0 <= o < 1 for o in overlaps):
        raise ExplainError(f"overlap must be in [0, 1) (one value or {nd}), got {overlap!r}")


def _roi_size(roi_size: int | Sequence[int], image_size: tuple[int, ...]) -> tuple[int, ...]:
    nd = len(image_size)
    if isinstance(roi_size, int):
        roi_size = (roi_size,) * nd
    if len(roi_size) != nd:
        raise ExplainError(
            f"roi_size {tuple(roi_size)} has {len(roi_size)} axes, the input has {nd} spatial axes"
        )
    return tuple(int(r) for r in fall_back_tuple(roi_size, image_size))


def _base_target(
    target: str | SegmentationTarget | None, target_label: int, roi: torch.Tensor | None
) -> tuple[SegmentationTarget, torch.Tensor | None]:
    """The question asked of every window, and the ROI on the input grid (if any)."""
    if isinstance(target, SegmentationTarget):
        base = target
    else:
        if roi is not None:
            make_target(target_label, target, roi)  # refuses a named region together with a roi
        base = make_target(target_label, target)
    if isinstance(base.region, torch.Tensor):
        if roi is not None:
            raise ExplainError("give the region either as roi or as the target's region")
        roi = base.region
    return base, roi


def _padded_roi(mask: torch.Tensor, roi_size: tuple[int, ...]) -> torch.Tensor:
    """The ROI padded with False as MONAI pads the input (centred, up to the window size), so
    the window coordinates MONAI gives index it."""
    size = mask.shape[2:]
    pad: list[int] = []
    for r, s in zip(reversed(roi_size), reversed(size)):
        diff = max(r - s, 0)
        pad += [diff // 2, diff - diff // 2]
    return F.pad(mask.to(torch.uint8), pad).bool() if any(pad) else mask
