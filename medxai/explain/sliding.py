"""Saliency for images and volumes too large for one forward pass, window by window.

Windows are laid out exactly as MONAI's ``sliding_window_inference`` lays them out (same padding
when the input is smaller than the window, same scan interval, ``dense_patch_slices`` and
``compute_importance_map``), so each window is the very input the network saw when the
segmentation was predicted. Each window is explained on its own, as the network saw it: its target
region is the window's own prediction (or the part of the user's ROI inside it). Raw
(unnormalised) window maps are blended with the importance weights into a CPU buffer and the
blend is normalised once at the end, so a window with a weak, small prediction does not shine as
brightly as one with a large, confident one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from monai.data.utils import compute_importance_map, dense_patch_slices
from monai.utils import fall_back_tuple
from torch import nn

from medxai.errors import ExplainError
from medxai.explain._common import chunks, normalise, prepare_input
from medxai.explain.methods import SaliencyMethod, get_method, run_method
from medxai.explain.targets import SegmentationTarget, _broadcast_roi, make_target

__all__ = ["sliding_window_saliency", "window_slices"]

BLEND_MODES = ("constant", "gaussian")
PAD_MODES = ("constant", "reflect", "replicate", "circular")


def _scan_interval(
    image_size: Sequence[int], roi_size: Sequence[int], overlap: Sequence[float]
) -> tuple[int, ...]:
    """MONAI's scan interval: ``int(roi * (1 - overlap))`` (at least 1), ``roi`` if it fills."""
    out = []
    for size, roi, o in zip(image_size, roi_size, overlap):
        out.append(int(roi) if roi == size else max(1, int(roi * (1 - o))))
    return tuple(out)


def window_slices(
    image_size: Sequence[int], roi_size: Sequence[int], overlap: float | Sequence[float] = 0.25
) -> list[tuple[slice, ...]]:
    """The spatial slices of the windows over a (padded) image at least ``roi_size`` large."""
    nd = len(image_size)
    overlaps = (overlap,) * nd if isinstance(overlap, (int, float)) else tuple(overlap)
    if len(overlaps) != nd or not all(0 <= o < 1 for o in overlaps):
        raise ExplainError(f"overlap must be in [0, 1) (one value or {nd}), got {overlap!r}")
    interval = _scan_interval(image_size, roi_size, overlaps)
    return [
        tuple(slice(int(s.start), int(s.stop)) for s in window)
        for window in dense_patch_slices(image_size, roi_size, interval, return_slice=True)
    ]


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
    if mode not in BLEND_MODES:
        raise ExplainError(f"unknown blend mode {mode!r}", hint=f"use one of {BLEND_MODES}")
    if padding_mode not in PAD_MODES:
        raise ExplainError(f"unknown padding mode {padding_mode!r}", hint=f"use one of {PAD_MODES}")
    if isinstance(sw_batch_size, bool) or not isinstance(sw_batch_size, int) or sw_batch_size < 1:
        raise ExplainError(f"sw_batch_size must be a positive integer, got {sw_batch_size!r}")
    if "normalize" in options:
        raise ExplainError("pass normalize to sliding_window_saliency, not to the method")
    n = x.shape[0]
    image_size = tuple(int(s) for s in x.shape[2:])
    nd = len(image_size)
    if isinstance(roi_size, int):
        roi_size = (roi_size,) * nd
    if len(roi_size) != nd:
        raise ExplainError(
            f"roi_size {tuple(roi_size)} has {len(roi_size)} axes, the input has {nd} spatial axes"
        )
    roi_size = tuple(int(r) for r in fall_back_tuple(roi_size, image_size))
    device = torch.device(sw_device) if sw_device is not None else x.device

    # Pad (centred) up to the window size where the image is smaller, like MONAI.
    before = [max(r - s, 0) // 2 for r, s in zip(roi_size, image_size)]
    after = [max(r - s, 0) - b for r, s, b in zip(roi_size, image_size, before)]
    pad = [p for d in reversed(range(nd)) for p in (before[d], after[d])]
    if isinstance(target, SegmentationTarget):
        base_target = target
    else:
        if roi is not None:
            make_target(target_label, target, roi)  # refuses a named region together with a roi
        base_target = make_target(target_label, target)
    if isinstance(base_target.region, torch.Tensor):
        if roi is not None:
            raise ExplainError("give the region either as roi or as the target's region")
        roi = base_target.region
    roi_mask = _broadcast_roi(roi, n, image_size) if roi is not None else None
    if any(pad):
        x = (
            F.pad(x, pad, mode=padding_mode, value=cval)
            if padding_mode == "constant"
            else F.pad(x, pad, mode=padding_mode)
        )
        if roi_mask is not None:
            roi_mask = F.pad(roi_mask.to(torch.uint8), pad).bool()
    padded_size = tuple(int(s) for s in x.shape[2:])

    windows = window_slices(padded_size, roi_size, overlap)
    importance = compute_importance_map(
        roi_size, mode=mode, sigma_scale=sigma_scale, device="cpu", dtype=torch.float32
    )
    importance = importance.as_subclass(torch.Tensor).reshape(1, 1, *roi_size)

    total = torch.zeros((n, 1, *padded_size), dtype=torch.float32)
    weight = torch.zeros((1, 1, *padded_size), dtype=torch.float32)
    for window in windows:
        weight[(slice(None), slice(None)) + window] += importance
    for i in range(n):
        for part in chunks(len(windows), sw_batch_size):
            batch = torch.cat([x[(slice(i, i + 1), slice(None)) + windows[w]] for w in part])
            if roi_mask is not None:
                window_target = base_target.with_region(
                    torch.cat(
                        [roi_mask[(slice(i, i + 1), slice(None)) + windows[w]] for w in part]
                    ).to(device)
                )
            else:
                window_target = base_target
            saliency = run_method(
                fn, net, batch.to(device), window_target, normalize=False, **options
            )
            saliency = saliency.detach().to("cpu", torch.float32)
            for j, w in enumerate(part):
                where = (slice(i, i + 1), slice(None)) + windows[w]
                total[where] += saliency[j : j + 1] * importance
            del saliency, batch

    total = total / weight
    crop = tuple(slice(b, b + s) for b, s in zip(before, image_size))
    total = total[(slice(None), slice(None)) + crop].contiguous()
    return normalise(total) if normalize else total
