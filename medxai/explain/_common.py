"""Small helpers shared by the saliency methods and the faithfulness metrics (private)."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from medxai.errors import ExplainError

#: Baselines a perturbation may replace pixels with.
BASELINES = ("zero", "mean", "blur")


def prepare_input(x: torch.Tensor) -> torch.Tensor:
    """Check a batch ``(N, C, *spatial)`` (2 or 3 spatial dims) and return it as a plain tensor.

    MONAI ``MetaTensor``s lose their metadata here (saliency has the input's grid anyway); the
    result is detached from any graph of the caller.
    """
    if not isinstance(x, torch.Tensor):
        raise ExplainError(f"input must be a torch tensor (N, C, *spatial), got {type(x).__name__}")
    if x.ndim not in (4, 5):
        raise ExplainError(
            f"input must be a batch (N, C, H, W) or (N, C, H, W, D), got shape {tuple(x.shape)}",
            hint="add the batch dimension with x[None]",
        )
    if not x.is_floating_point():
        raise ExplainError(f"input must be a floating point tensor, got {x.dtype}")
    if any(s == 0 for s in x.shape):
        raise ExplainError(f"input is empty: shape {tuple(x.shape)}")
    if torch.is_inference_mode_enabled():
        raise ExplainError(
            "saliency cannot be computed inside torch.inference_mode()",
            hint="call it outside the inference_mode block",
        )
    return x.detach().as_subclass(torch.Tensor)


def forward(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``net(x)`` as a plain tensor ``(N, K, *spatial)``; the first output if there are several."""
    param = next(net.parameters(), None)
    if param is not None and param.device != x.device:
        raise ExplainError(
            f"the network is on {param.device} but the input is on {x.device}",
            hint="move the input (or the network) to the same device",
        )
    out = net(x)
    if isinstance(out, (tuple, list)) and out:
        out = out[0]
    if not isinstance(out, torch.Tensor):
        raise ExplainError(
            f"the network returned {type(out).__name__}, expected a tensor of "
            "logits (N, K, *spatial)"
        )
    if out.ndim != x.ndim or out.shape[0] != x.shape[0]:
        raise ExplainError(
            f"the network mapped input {tuple(x.shape)} to {tuple(out.shape)}; "
            "expected logits (N, K, *spatial) for a segmentation"
        )
    return out.as_subclass(torch.Tensor)


def upsample(maps: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Resize ``(N, 1, *spatial_l)`` maps to ``size`` (bi/trilinear), float32, non-negative."""
    maps = maps.float()
    if tuple(maps.shape[2:]) != tuple(size):
        mode = "bilinear" if len(size) == 2 else "trilinear"
        maps = F.interpolate(maps, size=tuple(size), mode=mode, align_corners=False)
    return maps.clamp_min(0)


def normalise(maps: torch.Tensor) -> torch.Tensor:
    """Divide each sample's non-negative map by its maximum; an all-zero map stays zero."""
    peak = maps.flatten(1).amax(dim=1).clamp_min(torch.finfo(maps.dtype).tiny)
    return maps / peak.view(-1, *([1] * (maps.ndim - 1)))


def per_dim(value: int | Sequence[int], ndim: int, what: str) -> tuple[int, ...]:
    """An int or one int per spatial dimension, all positive."""
    values = (value,) * ndim if isinstance(value, int) else tuple(value)
    if len(values) != ndim or not all(isinstance(v, int) and v > 0 for v in values):
        raise ExplainError(f"{what} must be a positive integer or {ndim} of them, got {value!r}")
    return values


def chunks(n: int, size: int) -> Iterator[range]:
    """``range(n)`` in consecutive pieces of at most ``size``."""
    if size < 1:
        raise ExplainError(f"batch size must be at least 1, got {size}")
    for start in range(0, n, size):
        yield range(start, min(start + size, n))


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``(N, C, *spatial)`` with edge replication, per channel
    (MONAI's ``separable_filtering`` with a normalised Gaussian kernel of radius ``ceil(3 sigma)``).

    Args:
        sigma: standard deviation in pixels (voxels), the same along every spatial axis.
    """
    if sigma <= 0:
        return x.clone()
    from monai.networks.layers import separable_filtering

    radius = max(1, math.ceil(3 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=torch.float32, device=x.device)
    kernel = torch.exp(-0.5 * (t / sigma) ** 2)
    kernel = (kernel / kernel.sum()).to(x.dtype)
    return separable_filtering(x, [kernel] * (x.ndim - 2), mode="replicate")


def default_blur_sigma(spatial: Sequence[int]) -> float:
    """Blur strong enough to remove a lesion's texture: 1/16 of the smallest side, at least 1."""
    return max(1.0, min(spatial) / 16)


def make_baseline(
    x: torch.Tensor, kind: str | float | torch.Tensor, blur_sigma: float | None = None
) -> torch.Tensor:
    """The reference image a perturbation moves towards, shaped like ``x``.

    Args:
        x: ``(N, C, *spatial)``.
        kind: ``"zero"``, ``"mean"`` (each sample's per-channel mean), ``"blur"`` (Gaussian blur
            with ``blur_sigma`` pixels, default :func:`default_blur_sigma`), a number, or a tensor
            broadcastable to ``x``.
    """
    if isinstance(kind, torch.Tensor):
        try:
            return torch.broadcast_to(kind.to(device=x.device, dtype=x.dtype), x.shape).clone()
        except RuntimeError as exc:
            raise ExplainError(
                f"baseline of shape {tuple(kind.shape)} does not fit input {tuple(x.shape)}"
            ) from exc
    if isinstance(kind, (int, float)) and not isinstance(kind, bool):
        return torch.full_like(x, float(kind))
    if kind == "zero":
        return torch.zeros_like(x)
    if kind == "mean":
        return x.mean(dim=tuple(range(2, x.ndim)), keepdim=True).expand_as(x).clone()
    if kind == "blur":
        sigma = default_blur_sigma(x.shape[2:]) if blur_sigma is None else float(blur_sigma)
        return gaussian_blur(x, sigma)
    raise ExplainError(f"unknown baseline {kind!r}", hint=f"use one of {BASELINES} or a number")
