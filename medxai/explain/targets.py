"""The scalar a saliency method explains: Seg-Grad-CAM's segmentation target, over a chosen region.

A segmentation network gives logits ``(N, K, *spatial)`` (K classes, background 0, spatial
``H, W`` or ``H, W, D``). To explain it with methods made for classifiers, the output is reduced to
one score per sample: the sum of the logits of one class over a region ``M`` (Vinogradova, Dibrov
and Myers, "Towards Interpretable Semantic Segmentation via Gradient-weighted Class Activation
Mapping", AAAI 2020; pytorch-grad-cam's ``SemanticSegmentationTarget`` is the same)::

    score_n = sign * sum_{p in M_n} logits[n, label, p]

The region asks the question (:data:`REGIONS`):

* ``"segment"`` (alias ``"predicted"``, the default): the model's own mask for the label, "why is
  this lesion here?";
* ``"border"``: a band of ``border_width`` pixels on both sides of the predicted contour (dilation
  minus erosion of the mask), "why is the edge here?";
* ``"missed"``: pixels *not* predicted as the label whose probability is nevertheless at least
  ``missed_low`` (just below the threshold), "why not lesion here?". Its sign is -1: the map shows
  the evidence *against* the label in those pixels (what kept them out). Components that
  post-processing removed are not visible to a network-only target; the pipeline passes them as a
  user region (:func:`medxai.pipeline.compute_saliency`);
* ``"image"``: every pixel;
* a boolean tensor: a region the user gives (:func:`box_region` turns a box into one).

The model's mask is ``argmax == label`` by default, or ``softmax[label] >= threshold`` when a
threshold is given (binary bundles cut the foreground probability at a validated value); a
single-channel network uses ``sigmoid >= threshold`` (0.5 by default). It is computed from the
logits without gradient.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from medxai.choices import SALIENCY_TARGETS
from medxai.errors import ExplainError

__all__ = ["SegmentationTarget", "REGIONS", "as_target", "box_region", "make_target"]

#: Named regions a :class:`SegmentationTarget` may sum over ("predicted" is "segment").
REGIONS = SALIENCY_TARGETS
_ALIASES = {
    "predicted": "segment",
    "mask": "segment",
    "edge": "border",
    "contour": "border",
    "left-out": "missed",
    "leftout": "missed",
    "left_out": "missed",
    "whole": "image",
}


def _region_name(region: str) -> str:
    key = region.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in REGIONS:
        import difflib

        close = difflib.get_close_matches(key, list(REGIONS) + list(_ALIASES), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ExplainError(
            f"unknown target region {region!r}",
            hint=f"{hint}use one of {REGIONS} or a boolean ROI tensor",
        )
    return key


@dataclass(frozen=True, eq=False)
class SegmentationTarget:
    """``sign`` times the sum of the logits of class ``label`` inside a region, one score per sample.

    Args:
        label: the class to explain (index into the K output channels); 1 is the first foreground.
        region: a name of :data:`REGIONS` (``"predicted"`` is accepted for ``"segment"``) or a
            boolean tensor, the user's region of interest, shaped ``(*spatial)``,
            ``(1, *spatial)`` or ``(N, 1, *spatial)`` on the logits' grid (broadcast over the
            batch).
        border_width: ``"border"`` only: half-width of the band in pixels (voxels), >= 1.
        missed_low: ``"missed"`` only: the lowest label probability a left-out pixel may have,
            in (0, 1).
        threshold: ``None`` for the argmax mask, else the label probability at or above which a
            pixel is the label (softmax over K >= 2 channels, sigmoid for one channel).
        sign: +1 (evidence for the label) or -1 (evidence against); ``None`` picks -1 for
            ``"missed"`` and +1 otherwise.
    """

    label: int = 1
    region: str | torch.Tensor = "segment"
    border_width: int = 3
    missed_low: float = 0.1
    threshold: float | None = None
    sign: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.label, bool) or not isinstance(self.label, int) or self.label < 0:
            raise ExplainError(f"target label must be a non-negative integer, got {self.label!r}")
        if isinstance(self.region, str):
            object.__setattr__(self, "region", _region_name(self.region))
        elif not isinstance(self.region, torch.Tensor):
            raise ExplainError(
                f"target region must be a name or a tensor, got {type(self.region).__name__}"
            )
        if (
            isinstance(self.border_width, bool)
            or not isinstance(self.border_width, int)
            or self.border_width < 1
        ):
            raise ExplainError(
                f"border_width must be a positive integer (pixels), got {self.border_width!r}"
            )
        if not 0 < float(self.missed_low) < 1:
            raise ExplainError(
                f"missed_low must be a probability in (0, 1), got {self.missed_low!r}"
            )
        if self.threshold is not None and not 0 < float(self.threshold) < 1:
            raise ExplainError(f"threshold must be in (0, 1) or None, got {self.threshold!r}")
        if self.sign not in (None, 1, -1):
            raise ExplainError(f"sign must be 1, -1 or None, got {self.sign!r}")

    @property
    def polarity(self) -> int:
        """The sign actually used: :attr:`sign`, or -1 for ``"missed"`` and +1 otherwise."""
        if self.sign is not None:
            return int(self.sign)
        return -1 if isinstance(self.region, str) and self.region == "missed" else 1

    @property
    def name(self) -> str:
        """The region's name (``"roi"`` for a user region), for reports."""
        return self.region if isinstance(self.region, str) else "roi"

    def check(self, logits: torch.Tensor) -> None:
        """Raise :class:`ExplainError` when ``logits`` cannot be scored with this target."""
        if logits.ndim < 3:
            raise ExplainError(
                f"expected segmentation logits (N, K, *spatial), got shape {tuple(logits.shape)}"
            )
        k = logits.shape[1]
        if self.label >= k:
            raise ExplainError(
                f"target label {self.label} is out of range: the network has {k} "
                f"output channel(s) (labels 0..{k - 1})",
                hint="choose a label the model predicts",
            )

    def probability(self, logits: torch.Tensor) -> torch.Tensor:
        """The label's probability ``(N, 1, *spatial)`` (softmax, or sigmoid for one channel)."""
        logits = logits.detach().float()
        if logits.shape[1] == 1:
            return torch.sigmoid(logits)
        return logits.softmax(dim=1)[:, self.label : self.label + 1]

    def predicted(self, logits: torch.Tensor) -> torch.Tensor:
        """The model's mask for the label, boolean ``(N, 1, *spatial)`` (see the module doc)."""
        if self.threshold is None and logits.shape[1] > 1:
            return logits.detach().argmax(dim=1, keepdim=True) == self.label
        thr = 0.5 if self.threshold is None else float(self.threshold)
        return self.probability(logits) >= thr

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
        pred = self.predicted(logits)
        if self.region == "segment":
            return pred
        if self.region == "border":
            return border_band(pred, self.border_width)
        return (~pred) & (self.probability(logits) >= float(self.missed_low))

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        """Per-sample scores ``(N,)``: ``sign`` times the sum of the label logits in :meth:`mask`."""
        mask = self.mask(logits)
        chosen = logits[:, self.label : self.label + 1]
        score = (chosen * mask.to(chosen.dtype)).flatten(1).sum(dim=1)
        return score if self.polarity > 0 else -score

    def frozen(self, logits: torch.Tensor) -> SegmentationTarget:
        """The same target with its region fixed to :meth:`mask` of ``logits`` (sign kept).

        Perturbation methods (occlusion, integrated gradients, deletion) score many altered inputs;
        they must all be scored over the region of the unaltered input, which this gives.
        """
        return dataclasses.replace(self, region=self.mask(logits).detach(), sign=self.polarity)

    def sample(self, i: int) -> SegmentationTarget:
        """The target of sample ``i`` alone (a tensor region is sliced; a name is kept)."""
        if (
            isinstance(self.region, torch.Tensor)
            and self.region.ndim >= 2
            and self.region.shape[0] > 1
        ):
            return dataclasses.replace(self, region=self.region[i : i + 1], sign=self.polarity)
        return self

    def with_region(self, region: str | torch.Tensor) -> SegmentationTarget:
        """The same target (label, options, sign) over another region."""
        return dataclasses.replace(self, region=region)


def border_band(mask: torch.Tensor, width: int) -> torch.Tensor:
    """Pixels within ``width`` of the contour of a boolean ``(N, 1, *spatial)`` mask.

    Dilation minus erosion with a ``(2 width + 1)``-wide cube; pixels outside the array count as
    neither (an object cut by the image or window edge has no contour along that edge).
    """
    pool = F.max_pool2d if mask.ndim == 4 else F.max_pool3d
    m = mask.float()
    k, p = 2 * width + 1, width
    dilated = pool(m, k, stride=1, padding=p) > 0
    eroded = -pool(-m, k, stride=1, padding=p) > 0
    return dilated & ~eroded


def box_region(spatial: Sequence[int], box: Sequence[int]) -> torch.Tensor:
    """A boolean region ``(*spatial)`` that is True inside a box.

    Args:
        spatial: the grid's shape ``(I, J[, K])``.
        box: ``(start_i, start_j[, start_k], stop_i, stop_j[, stop_k])`` in pixels (voxels) of
            that grid, stops exclusive (Python slices), axis order as the array.

    Raises:
        ExplainError: wrong number of values, or an empty box / one outside the grid.
    """
    nd = len(spatial)
    values = [int(v) for v in box]
    if len(values) != 2 * nd:
        raise ExplainError(
            f"a box on a {nd}D grid needs {2 * nd} values (starts then stops), "
            f"got {len(values)}: {list(box)}"
        )
    starts, stops = values[:nd], values[nd:]
    starts = [max(0, s) for s in starts]
    stops = [min(e, size) for e, size in zip(stops, spatial)]
    if any(e <= s for s, e in zip(starts, stops)):
        raise ExplainError(
            f"box {list(box)} is empty on the grid {tuple(spatial)}",
            hint="give starts before stops, inside the image",
        )
    region = torch.zeros(tuple(int(s) for s in spatial), dtype=torch.bool)
    region[tuple(slice(s, e) for s, e in zip(starts, stops))] = True
    return region


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
    elif (
        len(shape) != len(spatial) + 2
        or shape[1] != 1
        or shape[2:] != spatial
        or shape[0] not in (1, n)
    ):
        raise ExplainError(
            f"region shape {shape} does not fit spatial shape {spatial} and batch {n}",
            hint="give the ROI as (*spatial), (1, *spatial) or (N, 1, *spatial)",
        )
    return roi.expand(n, 1, *spatial)


def as_target(target: SegmentationTarget | int | None) -> SegmentationTarget:
    """Accept a target, a label (int) or ``None`` (label 1) and return a target."""
    if target is None:
        return SegmentationTarget()
    if isinstance(target, SegmentationTarget):
        return target
    if isinstance(target, int) and not isinstance(target, bool):
        return SegmentationTarget(label=target)
    raise ExplainError(
        f"target must be a SegmentationTarget or a label, got {type(target).__name__}"
    )


def make_target(
    label: int = 1,
    target: str | SegmentationTarget | None = None,
    roi: torch.Tensor | None = None,
    **options: object,
) -> SegmentationTarget:
    """Build the target of :func:`medxai.explain.explain` from its arguments.

    ``target`` is a region name, a ready target (whose label wins) or ``None``; a ``roi`` (boolean
    tensor) makes the region the user's and excludes a named region other than ``segment``.
    ``options`` are :class:`SegmentationTarget` fields (``border_width``, ``missed_low``,
    ``threshold``, ``sign``).
    """
    if isinstance(target, SegmentationTarget):
        if roi is not None or options:
            raise ExplainError("give either a SegmentationTarget or roi/target options, not both")
        return target
    if roi is not None:
        if target is not None and _region_name(target) != "segment":
            raise ExplainError(
                f"target {target!r} and a roi were both given",
                hint="a roi is the region explained; drop one of them",
            )
        return SegmentationTarget(label, roi, **options)  # type: ignore[arg-type]
    return SegmentationTarget(label, target or "segment", **options)  # type: ignore[arg-type]
