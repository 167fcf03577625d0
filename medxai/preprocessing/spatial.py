"""Spatial resampling used by whole-image models, shared by training and inference.

Images are channel-first ``(C, *spatial)`` tensors. Downsampling is anti-aliased (bilinear or
trilinear with ``antialias`` in 2D, area-weighted in 3D) so that the model sees at inference
exactly what it saw in training.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = ["resize_image", "resize_probabilities", "resize_label"]


def resize_image(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Resize a ``(C, *spatial)`` float image to ``size`` (anti-aliased linear interpolation)."""
    size = tuple(int(s) for s in size)
    if tuple(x.shape[1:]) == size:
        return x.float()
    xb = x.float()[None]
    if len(size) == 2:
        out = F.interpolate(xb, size=size, mode="bilinear", align_corners=False, antialias=True)
    else:
        down = all(t <= s for t, s in zip(size, x.shape[1:]))
        mode = "area" if down else "trilinear"
        kwargs = {} if mode == "area" else {"align_corners": False}
        out = F.interpolate(xb, size=size, mode=mode, **kwargs)
    return out[0]


def resize_probabilities(p: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Resize ``(C, *spatial)`` class scores (logits or probabilities) with linear interpolation.

    Used to bring a prediction back onto the input grid before the argmax, which gives smooth
    boundaries rather than the staircase of a nearest-neighbour label resize.
    """
    size = tuple(int(s) for s in size)
    if tuple(p.shape[1:]) == size:
        return p
    mode = "bilinear" if len(size) == 2 else "trilinear"
    return F.interpolate(p[None], size=size, mode=mode, align_corners=False)[0]


def resize_label(
    label: torch.Tensor, size: Sequence[int], num_classes: int | None = None
) -> torch.Tensor:
    """Resize an integer label map ``(1, *spatial)`` by resizing its one-hot form and argmax.

    Smoother than nearest neighbour and never invents label values.
    """
    size = tuple(int(s) for s in size)
    lab = label.long()[0]
    if tuple(lab.shape) == size:
        return lab[None].to(torch.uint8)
    n = int(num_classes or int(lab.max()) + 1)
    onehot = F.one_hot(lab, n).movedim(-1, 0).float()
    return resize_image(onehot, size).argmax(0, keepdim=True).to(torch.uint8)
