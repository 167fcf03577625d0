"""Network factory: builds the MONAI network a bundle describes."""

from __future__ import annotations

from typing import Any

import torch
from monai.networks.nets import UNet

from medxai.errors import ModelError

__all__ = ["NETWORKS", "build_network", "default_unet_args"]

#: Networks a bundle may name in ``inference.json["network"]["name"]``.
NETWORKS: dict[str, type[torch.nn.Module]] = {"UNet": UNet}


def default_unet_args(
    spatial_dims: int,
    in_channels: int,
    out_channels: int,
    *,
    width: int = 16,
    depth: int = 5,
    num_res_units: int = 2,
    dropout: float = 0.0,
    norm: str = "batch",
) -> dict[str, Any]:
    """Arguments for a MONAI ``UNet`` whose channel count doubles at each of ``depth`` levels.

    ``depth`` levels mean ``depth - 1`` encoder downsamplings by 2 (and as many decoder blocks).
    """
    if depth < 2:
        raise ModelError(f"UNet depth must be at least 2, got {depth}")
    return {
        "spatial_dims": spatial_dims,
        "in_channels": in_channels,
        "out_channels": out_channels,
        "channels": [width * 2**i for i in range(depth)],
        "strides": [2] * (depth - 1),
        "num_res_units": num_res_units,
        "dropout": dropout,
        "norm": norm,
    }


def build_network(name: str, args: dict[str, Any]) -> torch.nn.Module:
    """Build the network ``name`` (a key of :data:`NETWORKS`) with keyword ``args``."""
    if name not in NETWORKS:
        raise ModelError(
            f"unknown network {name!r}", hint=f"use one of: {', '.join(sorted(NETWORKS))}"
        )
    try:
        return NETWORKS[name](**args)
    except (TypeError, ValueError, AssertionError) as exc:
        raise ModelError(f"cannot build {name} with arguments {args}: {exc}") from exc
