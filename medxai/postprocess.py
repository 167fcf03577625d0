"""Label-map post-processing that a bundle asks for in its ``postprocessing`` section.

``inference.json`` may hold::

    "postprocessing": {"keep_largest_component": true, "fill_holes": true}

Each key is ``true`` (every foreground label) or a list of label values. ``keep_largest_component``
keeps, per label, the largest face-connected region and sets the rest to background;
``keep_components`` (a count N, or ``{label: N}``) keeps the N largest regions instead (two lung
fields) (nnU-Net
decides the same step on validation data; ``scripts/tune_whole_image_inference.py`` does it for
medxai). ``fill_holes`` gives a label the background regions that it encloses. Both work in 2D and
3D. This is the binary-morphology part of MONAI's ``KeepLargestConnectedComponent`` and
``FillHoles``, done with ``scipy.ndimage`` so that scikit-image is not needed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from medxai.choices import POSTPROCESSING_KEYS
from medxai.errors import ModelError
from medxai.labelmaps import present_values

__all__ = [
    "POSTPROCESSING_KEYS",
    "postprocess_labels",
    "check_postprocessing",
    "MaskCleanUp",
    "mask_clean_up",
]


def check_postprocessing(spec: dict[str, Any] | None) -> dict[str, Any]:
    """``spec`` as a dict, after checking its keys; raises :class:`ModelError` otherwise."""
    spec = dict(spec or {})
    unknown = sorted(set(spec) - set(POSTPROCESSING_KEYS))
    if unknown:
        raise ModelError(
            f"unknown postprocessing step(s) {unknown} in the bundle",
            hint=f"known steps: {', '.join(POSTPROCESSING_KEYS)}",
        )
    _keep_components(spec.get("keep_components"), [1])  # a bad count is refused on load
    return spec


def _applied(value: Any, present: Iterable[int]) -> list[int]:
    if value is True:
        return [v for v in present if v != 0]
    if not value:
        return []
    return [int(v) for v in value if int(v) != 0]


def _largest(mask: np.ndarray, keep: int = 1) -> np.ndarray:
    """The ``keep`` largest face-connected regions of ``mask``."""
    if _one_component(mask):  # one region (a lesion's mask, usually): nothing to label
        return mask
    comp, n = ndimage.label(mask)
    if n <= keep:
        return mask
    sizes = np.bincount(comp.ravel())
    sizes[0] = 0
    kept = np.argsort(sizes, kind="stable")[::-1][:keep]
    selected = np.zeros(n + 1, dtype=bool)
    selected[kept] = True
    return selected[comp]


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """``scipy.ndimage.binary_fill_holes(mask)`` (face connectivity), by labelling the
    background once: the background regions that touch no face of the array are holes. The
    same result, about 4x faster than scipy's iterative propagation on a photo-sized mask (it
    runs once per test-time augmentation view for the uncertainty report)."""
    mask = np.asarray(mask, dtype=bool)
    if not _may_enclose(mask):
        return mask.copy()
    comp, n = ndimage.label(~mask)
    if n == 0:
        return mask.copy()
    outside = np.zeros(n + 1, dtype=bool)
    for axis in range(mask.ndim):
        outside[np.take(comp, 0, axis=axis)] = True
        outside[np.take(comp, -1, axis=axis)] = True
    if outside[1:].all():  # every background region touches a face: no hole
        return mask.copy()
    # label 0 is the mask itself: kept (not outside), as is every hole
    outside[0] = False
    return ~outside[comp]


def _one_run_per_line(mask: np.ndarray, axis: int) -> bool:
    """Whether every line of ``mask`` along ``axis`` holds at most one run of mask pixels (the
    runs' starts counted against the lines that hold any)."""
    lo = [slice(None)] * mask.ndim
    hi = [slice(None)] * mask.ndim
    lo[axis], hi[axis] = slice(None, -1), slice(1, None)
    head = [slice(None)] * mask.ndim
    head[axis] = slice(0, 1)
    starts = np.count_nonzero(mask[tuple(head)])
    starts += np.count_nonzero(mask[tuple(hi)] > mask[tuple(lo)])  # False -> True steps
    return int(starts) == int(np.count_nonzero(mask.any(axis=axis)))


def _may_enclose(mask: np.ndarray) -> bool:
    """False when ``mask`` has no hole for sure: along some axis, every line holds one run of
    mask pixels at most. (A hole's pixel has the mask on both sides along every axis: the
    straight line from it to a face of the array would otherwise be background and join it to
    the outside; so each line through it holds two runs.) A few passes over booleans instead
    of labelling the background: a lesion's mask usually passes."""
    return not any(_one_run_per_line(mask, axis) for axis in reversed(range(mask.ndim)))


def _one_component(mask: np.ndarray) -> bool:
    """True when the 2D ``mask`` is one face-connected region for sure: along its rows (or its
    columns) the lines with mask pixels are consecutive, each holds one run, and each run
    shares a place with the next one (so touches it). False also when it could not be told
    this way (then the mask is labelled)."""
    if mask.ndim != 2:
        return False
    return _chained_runs(mask) or _chained_runs(mask.T)


def _chained_runs(mask: np.ndarray) -> bool:
    """:func:`_one_component` along the rows of ``mask``."""
    if not _one_run_per_line(mask, 1):
        return False
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0 or int(rows[-1] - rows[0]) + 1 != rows.size:
        return False
    inside = mask[rows[0] : rows[-1] + 1]
    first = inside.argmax(axis=1)
    last = mask.shape[1] - 1 - inside[:, ::-1].argmax(axis=1)
    return bool(np.all(np.maximum(first[:-1], first[1:]) <= np.minimum(last[:-1], last[1:])))


def _keep_components(value: Any, present: Iterable[int]) -> dict[int, int]:
    """``keep_components``: N (every foreground label keeps its N largest regions) or
    ``{label: N}``."""
    if not value:
        return {}
    if isinstance(value, dict):
        return {int(k): int(v) for k, v in value.items() if int(k) != 0}
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ModelError(
            f"postprocessing keep_components must be a count >= 1 or "
            f"{{label: count}}, got {value!r}"
        )
    return {v: int(value) for v in present if v != 0}


def postprocess_labels(labels: torch.Tensor, spec: dict[str, Any] | None) -> torch.Tensor:
    """Apply the bundle's post-processing to a ``(1, *spatial)`` label map (a new tensor).

    Largest-component filtering runs before hole filling, label by label in increasing value;
    a filled hole never overwrites another foreground label.
    """
    spec = check_postprocessing(spec)
    if not any(spec.values()):
        return labels
    full = labels[0].cpu().numpy().copy()
    box = foreground_box(full)
    if box is None:  # nothing segmented: nothing to clean up
        return torch.from_numpy(full)[None].to(labels.dtype)
    arr = full[box]  # a view: the work below writes into ``full``
    present = present_values(arr)
    for value in _applied(spec.get("keep_largest_component"), present):
        mask = arr == value
        arr[mask & ~_largest(mask)] = 0
    for value, keep in _keep_components(spec.get("keep_components"), present).items():
        mask = arr == value
        arr[mask & ~_largest(mask, keep)] = 0
    for value in _applied(spec.get("fill_holes"), present):
        filled = fill_holes(arr == value)
        arr[filled & (arr == 0)] = value
    return torch.from_numpy(full)[None].to(labels.dtype)


def foreground_box(labels: np.ndarray) -> tuple[slice, ...] | None:
    """The bounding box of the non-zero voxels grown by one voxel on each side (clipped to
    the array), or None when there are none. Component selection and hole filling inside it
    give the same result as on the whole array: every region lies inside, and background on
    the box's faces is outside the foreground's extent, so connected to the outside (on a
    lesion photo the box is a few percent of the picture; the clean-up runs once per test-time
    augmentation view)."""
    mask = np.asarray(labels)
    if mask.dtype != np.bool_:
        mask = mask != 0
    box = []
    for axis, n in enumerate(mask.shape):
        # the extent along one axis: which of its planes hold any foreground (the same box as
        # ndimage.find_objects, without its pass over every pixel's label)
        others = tuple(a for a in range(mask.ndim) if a != axis)
        hit = np.flatnonzero(mask.any(axis=others) if others else mask)
        if hit.size == 0:
            return None
        box.append(slice(max(int(hit[0]) - 1, 0), min(int(hit[-1]) + 2, n)))
    return tuple(box)


@dataclass(frozen=True)
class MaskCleanUp:
    """The post-processing of a label map whose only foreground value is ``value``, read from
    the spec once and run on its boolean mask (:func:`mask_clean_up`; the test-time
    augmentation views of a thresholded binary model: nine label maps per photo).

    Attributes:
        value: the foreground value.
        keeps: the component counts kept, in turn (``keep_largest_component``: 1, then
            ``keep_components``' N).
        fill: whether the mask's holes are filled.
    """

    value: int
    keeps: tuple[int, ...]
    fill: bool

    def __call__(self, mask: np.ndarray) -> np.ndarray:
        """The uint8 label map (0 and ``value``) of the boolean ``mask`` after the clean-up, as
        :func:`postprocess_labels` gives it for ``mask * value`` (a new array). The steps run
        in the mask's bounding box (:func:`foreground_box`), on the mask itself: with one
        foreground value, removing other components and filling holes only ever concern it."""
        mask = np.asarray(mask, dtype=bool)
        out = np.zeros(mask.shape, dtype=np.uint8)
        box = foreground_box(mask)
        if box is None:
            return out
        sub = mask[box]
        for keep in self.keeps:
            sub = _largest(sub, keep)
        if self.fill:
            sub = fill_holes(sub)
        out[box][sub] = self.value
        return out


def mask_clean_up(spec: dict[str, Any] | None, value: int = 1) -> MaskCleanUp:
    """The :class:`MaskCleanUp` of the post-processing ``spec`` for the foreground value
    ``value`` (the steps of :func:`postprocess_labels` that apply to it, in its order)."""
    spec = check_postprocessing(spec)
    value = int(value)
    keeps = [1] if value in _applied(spec.get("keep_largest_component"), [value]) else []
    counts = _keep_components(spec.get("keep_components"), [value])
    if value in counts:
        keeps.append(counts[value])
    return MaskCleanUp(value, tuple(keeps), value in _applied(spec.get("fill_holes"), [value]))
