"""The scalar a saliency method explains: Seg-Grad-CAM's segmentation target.

A segmentation network gives logits ``(N, K, *spatial)`` (K classes, background 0, spatial
``H, W`` or ``H, W, D``). To explain it with methods made for classifiers, the output is reduced to
one score per sample: the sum of the logits of one class over a region ``M`` (Vinogradova, Dibrov
and Myers, "Towards Interpretable Semantic Segmentation via Gradient-weighted Class Activation
Mapping", AAAI 2020)::

    score_n = sum_{p in M_n} logits[n, label, p]

``M`` is, by default, the model's own mask for the label (``argmax == label``, computed from the
logits without gradient); it may instead be a region of interest given by the user, or the whole
image.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from medxai.errors import ExplainError

__all__ = ["SegmentationTarget", "REGIONS", "as_target"]

#: Named regions a :class:`SegmentationTarget` may sum over.
REGIONS = ("predicted", "image")


@dataclass(frozen=True, eq=False)
class SegmentationTarget:
    """Sum of the logits of class ``label`` inside a region, one score per sample.

    Args:
        label: the class to explain (index into the K output channels); 1 is the first foreground.
        region: ``"predicted"`` (default: where the model's argmax equals ``label``),
            ``"image"`` (every pixel), or a boolean tensor: the user's region of interest, shaped
            ``(*spatial)``, ``(1, *spatial)`` or ``(N, 1, *spatial)`` on the logits' grid (it is
            broadcast over the batch).
    """

    label: int = 1
    region: str | torch.Tensor = "predicted"

    def __post_init__(self) -> None:
        if isinstance(self.label, bool) or not isinstance(self.label, int) or self.label < 0:
            raise ExplainError(f"target label must be a non-negative integer, got {self.label!r}")
        if isinstance(self.region, str):
            if self.region not in REGIONS:
                raise ExplainError(f"unknown target region {self.region!r}",
                                   hint=f"use one of {REGIONS} or a boolean ROI tensor")
        elif not isinstance(self.region, torch.Tensor):
            raise ExplainError(f"target region must be a name or a tensor, got "
                               f"{type(self.region).__name__}")

    def check(self, logits: torch.Tensor) -> None:
        """Raise :class:`ExplainError` when ``logits`` cannot be scored with this target."""
        if logits.ndim < 3:
            raise ExplainError(f"expected segmentation logits (N, K, *spatial), got shape "
                               f"{tuple(logits.shape)}")
        k = logits.shape[1]
        if self.label >= k:
            raise ExplainError(f"target label {self.label} is out of range: the network has {k} "
                               f"output channel(s) (labels 0..{k - 1})",
                               hint="choose a label the model predicts")

    def mask(self, logits: torch.Tensor) -> torch.Tensor:
        """The region ``M`` as a boolean tensor ``(N, 1, *spatial)`` on the logits' device.

        Args:
            logits: ``(N, K, *spatial)``; only read, never differentiated.
        """
        self.check(logits)
        n, _, *spatial = logits.shape
        if isinstance(self.region, torch.Tensor):
            return _broadcast_roi(self.region, n, tuple(spatial)).to(logits.device)
        if self.region == "image":
            return torch.ones((n, 1, *spatial), dtype=torch.bool, device=logits.device)
        return (logits.detach().argmax(dim=1, keepdim=True) == self.label)

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        """Per-sample scores ``(N,)``: the sum of the ``label`` logits inside :meth:`mask`."""
        mask = self.mask(logits)
        chosen = logits[:, self.label : self.label + 1]
        return (chosen * mask.to(chosen.dtype)).flatten(1).sum(dim=1)

    def frozen(self, logits: torch.Tensor) -> SegmentationTarget:
        """The same target with its region fixed to :meth:`mask` of ``logits``.

        Perturbation methods (occlusion, integrated gradients, deletion) score many altered inputs;
        they must all be scored over the region of the unaltered input, which this gives.
        """
        return SegmentationTarget(self.label, self.mask(logits).detach())


def _broadcast_roi(roi: torch.Tensor, n: int, spatial: tuple[int, ...]) -> torch.Tensor:
    """Bring a user ROI to ``(N, 1, *spatial)`` bool, or raise :class:`ExplainError`."""
    if roi.dtype != torch.bool:
        if roi.is_floating_point() or roi.is_complex():
            raise ExplainError(f"ROI must be a boolean (or integer 0/1) tensor, got {roi.dtype}")
        roi = roi != 0
    shape = tuple(roi.shape)
    if shape == spatial:
        roi = roi[None, None]
    elif shape == (1, *spatial):
        roi = roi[None]
    elif len(shape) != len(spatial) + 2 or shape[1] != 1 or shape[2:] != spatial \
            or shape[0] not in (1, n):
        raise ExplainError(f"region shape {shape} does not fit spatial shape {spatial} and "
                           f"batch {n}",
                           hint="give the ROI as (*spatial), (1, *spatial) or (N, 1, *spatial)")
    return roi.expand(n, 1, *spatial)


def as_target(target: SegmentationTarget | int | None) -> SegmentationTarget:
    """Accept a target, a label (int) or ``None`` (label 1) and return a target."""
    if target is None:
        return SegmentationTarget()
    if isinstance(target, SegmentationTarget):
        return target
    if isinstance(target, int) and not isinstance(target, bool):
        return SegmentationTarget(label=target)
    raise ExplainError(f"target must be a SegmentationTarget or a label, got "
                       f"{type(target).__name__}")
