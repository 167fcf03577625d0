"""Reorientation of channel-first ``(C, *spatial)`` tensors to RAS+ voxel axes (3D models).

Moved here from :mod:`medxai.inference` (where they were private) so that inference and training
share one public implementation.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["orientation_to_ras", "reorient", "unreorient"]


def orientation_to_ras(affine: torch.Tensor | Any, ndim: int) -> Any:
    """nibabel orientation transform taking the input's voxel axes to RAS+ (3D only)."""
    import nibabel as nib
    import numpy as np

    aff = np.asarray(affine, dtype=np.float64)
    return nib.orientations.io_orientation(aff)[:ndim]


def reorient(x: torch.Tensor, ornt: Any) -> torch.Tensor:
    """Apply a nibabel orientation (permute, then flip) to the spatial axes of ``(C, *spatial)``."""
    perm = [int(a) for a in ornt[:, 0]]
    x = x.permute(0, *[p + 1 for p in perm])
    flips = [d + 1 for d, (_, f) in enumerate(ornt) if f < 0]
    return x.flip(flips) if flips else x


def unreorient(x: torch.Tensor, ornt: Any) -> torch.Tensor:
    """Inverse of :func:`reorient`."""
    flips = [d + 1 for d, (_, f) in enumerate(ornt) if f < 0]
    if flips:
        x = x.flip(flips)
    perm = [int(a) for a in ornt[:, 0]]
    inv = [0] * len(perm)
    for d, p in enumerate(perm):
        inv[p] = d
    return x.permute(0, *[p + 1 for p in inv])
