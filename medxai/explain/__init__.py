"""Saliency for segmentation networks (MONAI UNet and others), 2D and 3D, and its faithfulness.

Quick use::

    from medxai.explain import explain
    saliency = explain(net, x, method="gradcam")     # x: (N, C, H, W[, D]) -> (N, 1, H, W[, D])

Methods (:data:`METHODS`): ``gradcam`` (Seg-Grad-CAM), ``gradcampp`` (Grad-CAM++), ``hirescam``,
``layercam`` (any number of layers, e.g. ``layer="encoder"``), ``smoothgrad``, ``occlusion``,
``ig`` (integrated gradients). Each explains the sum of one class's logits over a region
(:class:`SegmentationTarget`: the segment, its ``border``, what was ``missed``, the whole
``image`` or a user region), returns ``(N, 1, *spatial)`` float32 in [0, 1] on the
input grid, and leaves the network exactly as it was (mode, ``requires_grad``, no hooks left).
Large inputs: :func:`sliding_window_saliency`. Trust: :func:`deletion_insertion`,
:func:`energy_in_mask`, :func:`randomisation_sanity`.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from medxai.explain.faithfulness import (
    complexity,
    context_share,
    deletion_insertion,
    energy_in_mask,
    informativeness,
    lesion_energy_ratio,
    randomisation_sanity,
    redundancy,
    sparseness,
    spearman,
)
from medxai.explain.hooks import LayerCapture, capture_layer, frozen_model
from medxai.explain.layers import (
    default_target_layer,
    list_target_layers,
    resolve_layer,
    resolve_layers,
    unet_layer_aliases,
)
from medxai.explain.methods import (
    CAM_METHODS,
    METHODS,
    KeptForward,
    SaliencyMethod,
    get_method,
    grad_cam_pp,
    hires_cam,
    integrated_gradients,
    layer_cam,
    occlusion,
    run_method,
    seg_grad_cam,
    smooth_grad,
)
from medxai.explain.sliding import sliding_window_saliency
from medxai.explain.targets import REGIONS, SegmentationTarget, box_region, make_target

__all__ = [
    "explain",
    "SegmentationTarget",
    "REGIONS",
    "box_region",
    "make_target",
    "METHODS",
    "CAM_METHODS",
    "KeptForward",
    "get_method",
    "run_method",
    "seg_grad_cam",
    "grad_cam_pp",
    "hires_cam",
    "layer_cam",
    "smooth_grad",
    "occlusion",
    "integrated_gradients",
    "list_target_layers",
    "default_target_layer",
    "resolve_layer",
    "resolve_layers",
    "unet_layer_aliases",
    "frozen_model",
    "capture_layer",
    "LayerCapture",
    "sliding_window_saliency",
    "deletion_insertion",
    "energy_in_mask",
    "randomisation_sanity",
    "spearman",
    "redundancy",
    "context_share",
    "sparseness",
    "complexity",
    "lesion_energy_ratio",
    "informativeness",
]


def explain(
    net: nn.Module,
    x: torch.Tensor,
    method: str | SaliencyMethod = "gradcam",
    target_label: int = 1,
    layer: Any = None,
    roi: torch.Tensor | Sequence[int] | None = None,
    *,
    target: str | SegmentationTarget | None = None,
    **options: Any,
) -> torch.Tensor:
    """Saliency map of ``net``'s segmentation of ``x`` for one label.

    Args:
        net: network mapping ``(N, C, *spatial)`` to logits ``(N, K, *spatial)``.
        x: ``(N, C, H, W)`` or ``(N, C, H, W, D)`` (a single image ``(C, ...)`` needs ``x[None]``).
        method: a name in :data:`METHODS` (``gradcam``, ``gradcampp``, ``hirescam``, ``layercam``,
            ``smoothgrad``, ``occlusion``, ``ig``) or a method callable.
        target_label: the class to explain (1 = first foreground).
        layer: CAM methods only: layer name, role alias (``bottleneck``, ``encoder.2``,
            ``skip.0``...; :func:`unet_layer_aliases`), module, or several (list, comma-separated
            or a group such as ``encoder``). Default: :func:`default_target_layer`.
        roi: optional region of interest on the output grid to explain instead of the predicted
            mask: a boolean tensor (``(*spatial)``, ``(1, *spatial)`` or ``(N, 1, *spatial)``) or
            a box ``(start_i, start_j[, start_k], stop_i, stop_j[, stop_k])`` in pixels.
        target: the question, a region name of :data:`REGIONS` (``segment`` default, ``border``,
            ``missed``, ``image``) or a :class:`SegmentationTarget`.
        options: method options (e.g. ``steps=`` for ``ig``, ``patch_size=`` for ``occlusion``)
            and target options (``border_width``, ``missed_low``, ``threshold``).

    Returns:
        ``(N, 1, H, W[, D])`` float32 in [0, 1] on ``x``'s device.

    Raises:
        ExplainError: unknown method, layer or option, label out of range, bad input.
    """
    target_options = {
        k: options.pop(k) for k in ("border_width", "missed_low", "threshold") if k in options
    }
    if roi is not None and not isinstance(roi, torch.Tensor):
        roi = box_region(x.shape[2:], roi)
    target = make_target(target_label, target, roi, **target_options)
    if layer is not None:
        options["layer"] = layer
    return run_method(method, net, x, target, **options)


class _CallableModule(types.ModuleType):
    """``medxai.explain`` is both this package and the function :func:`explain`: calling the
    module calls the function, so ``medxai.explain(net, x)`` works however it was imported."""

    def __call__(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return explain(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
