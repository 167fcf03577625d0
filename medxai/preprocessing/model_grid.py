"""Onto the model grid and back, as MONAI invertible transforms.

A model sees its input on its own grid: a 2D model takes the slice of a one-slice volume, a
whole-image model a fixed ``spatial_size``, a sliding-window model a volume in RAS orientation,
resampled to ``spacing`` when the model gives one. :func:`model_grid_transform` builds that chain
as a MONAI :class:`~monai.transforms.Compose` of invertible transforms, which record what they did
in the image's ``applied_operations`` (MONAI's trace); :func:`from_model_grid` brings class scores
back onto the input's grid with MONAI's own inversion (``Compose.inverse``, as ``Invertd`` does),
not with hand-kept state. Inference, saliency, uncertainty and training all go through it.

Reorientation is MONAI's :class:`~monai.transforms.Orientation` and resampling to a spacing
MONAI's :class:`~monai.transforms.Spacing` (bilinear; nearest for label maps), so that a
bundle's generated MONAI config (``Orientationd``, ``Spacingd``) gives the same grid. The
whole-image resize keeps medxai's anti-aliased resize
(:func:`medxai.preprocessing.spatial.resize_image`, what the shipped 2D models were trained
with, which MONAI's ``Resize`` does not offer), wrapped as an invertible transform whose inverse
resizes class scores linearly (:func:`~medxai.preprocessing.spatial.resize_probabilities`).

Images are channel-first ``(C, *spatial)``; what goes in is made a
:class:`~monai.data.MetaTensor` carrying the input's affine (RAS, MONAI's convention).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import Compose, InvertibleTransform, MapTransform, Orientation, Spacing
from monai.utils import TraceKeys

from medxai.preprocessing.spatial import resize_image, resize_label, resize_probabilities

__all__ = [
    "Kind",
    "ModelGrid",
    "ModelGridd",
    "ResizeToShape",
    "SqueezeSlice",
    "bundle_model_grid",
    "from_model_grid",
    "model_grid_transform",
    "to_model_grid",
]

#: what is being brought onto the model grid: an image (anti-aliased linear resize), an integer
#: label map (one-hot resize and argmax) or a region mask (linear resize, kept as a fraction)
Kind = Literal["image", "label", "region"]


#: MONAI's axis letters for its RAS convention (given explicitly: MONAI 1.6 warns that the
#: default will follow the MetaTensor's ``space``)
_RAS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))


def _as_meta(x: torch.Tensor, like: Any = None) -> MetaTensor:
    if isinstance(x, MetaTensor):
        return x
    affine = getattr(like, "affine", None)
    return MetaTensor(x, affine=torch.eye(4, dtype=torch.float64) if affine is None else affine)


def _like(img: MetaTensor, array: torch.Tensor, affine: torch.Tensor) -> MetaTensor:
    """``array`` with ``img``'s metadata and trace and a new ``affine``."""
    meta = {k: v for k, v in img.meta.items() if k != "affine"}
    return MetaTensor(
        array, affine=affine, meta=meta, applied_operations=list(img.applied_operations)
    )


def _resize(x: torch.Tensor, size: Sequence[int], kind: Kind) -> torch.Tensor:
    plain = x.as_tensor() if isinstance(x, MetaTensor) else x
    if kind == "label":
        return resize_label(plain, size)
    return resize_image(plain, size)


def _scaled_affine(affine: torch.Tensor, old: Sequence[int], new: Sequence[int]) -> torch.Tensor:
    """The affine of ``old`` voxels resampled to ``new`` over the same extent (voxel centres,
    ``align_corners=False``)."""
    aff = torch.as_tensor(affine, dtype=torch.float64).clone()
    nd = len(old)
    rows = aff.shape[0] - 1  # every world axis (a 2D picture's 4x4 affine has three)
    scale = torch.tensor([o / n for o, n in zip(old, new)], dtype=torch.float64)
    shift = (scale - 1.0) / 2.0
    aff[:rows, -1] = aff[:rows, -1] + aff[:rows, :nd] @ shift
    aff[:rows, :nd] = aff[:rows, :nd] * scale[None, :]
    return aff


class SqueezeSlice(InvertibleTransform):
    """A 2D model's view of a one-slice volume: ``(C, I, J, 1)`` becomes ``(C, I, J)``; other
    inputs pass unchanged. The inverse adds the slice axis back."""

    def __init__(self, spatial_dims: int) -> None:
        self.spatial_dims = spatial_dims

    def __call__(self, img: torch.Tensor) -> MetaTensor:
        img = _as_meta(img)
        squeeze = self.spatial_dims == 2 and img.ndim == 4
        # a new MetaTensor either way: the caller's trace is never appended to
        out = _like(img, img.as_tensor()[..., 0] if squeeze else img.as_tensor(), img.affine)
        self.push_transform(out, orig_size=tuple(img.shape[1:]), extra_info={"squeezed": squeeze})
        return out

    def inverse(self, data: torch.Tensor) -> MetaTensor:
        data = _as_meta(data)
        info = self.pop_transform(data)
        if info[TraceKeys.EXTRA_INFO]["squeezed"]:
            return _as_meta(data[..., None], data)
        return data


class ResizeToShape(InvertibleTransform):
    """Resize to a fixed ``size`` (a whole-image model's ``spatial_size``); the inverse resizes
    class scores back to the original size."""

    def __init__(self, size: Sequence[int], kind: Kind = "image") -> None:
        self.size = tuple(int(s) for s in size)
        self.kind = kind

    def __call__(self, img: torch.Tensor) -> MetaTensor:
        img = _as_meta(img)
        old = tuple(int(s) for s in img.shape[1:])
        out = _like(
            img, _resize(img, self.size, self.kind), _scaled_affine(img.affine, old, self.size)
        )
        self.push_transform(out, orig_size=old)
        return out

    def inverse(self, data: torch.Tensor) -> MetaTensor:
        data = _as_meta(data)
        info = self.pop_transform(data)
        return _resize_back(data, info[TraceKeys.ORIG_SIZE])


def _resize_back(data: MetaTensor, size: Sequence[int]) -> MetaTensor:
    size = tuple(int(s) for s in size)
    old = tuple(int(s) for s in data.shape[1:])
    if old == size:
        return data
    return _like(
        data, resize_probabilities(data.as_tensor(), size), _scaled_affine(data.affine, old, size)
    )


def model_grid_transform(
    spatial_dims: int,
    mode: str,
    *,
    spatial_size: Sequence[int] | None = None,
    spacing: Sequence[float] | None = None,
    kind: Kind = "image",
) -> Compose:
    """The chain onto a model grid for one input: the slice of a one-slice volume for a 2D
    model; then for a whole-image model (``mode`` ``whole_image``) a resize to
    ``spatial_size``; for a 3D sliding-window model MONAI's ``Orientation("RAS")`` and, with
    ``spacing``, resampling to it. ``kind`` says how values are resized (:data:`Kind`).
    Intensity is not part of it (it does not move voxels); see :func:`to_model_grid`."""
    steps: list[Any] = [SqueezeSlice(spatial_dims)]
    if mode == "whole_image":
        if not spatial_size:
            raise ValueError("a whole-image model grid needs a spatial_size")
        steps.append(ResizeToShape(spatial_size, kind))
    elif spatial_dims == 3:
        steps.append(Orientation(axcodes="RAS", labels=_RAS_LABELS))
        if spacing:
            # MONAI's own resampling, as the bundle's generated MONAI config (Spacingd) does it
            mode = "nearest" if kind == "label" else "bilinear"
            steps.append(Spacing(pixdim=[float(v) for v in spacing], mode=mode))
    return Compose(steps)


def bundle_model_grid(
    bundle: Any, size: Sequence[int] | None = None, kind: Kind = "image"
) -> Compose:
    """:func:`model_grid_transform` of a :class:`medxai.models.ModelBundle`, from its typed
    contract (input dims, inference mode, :class:`medxai.models.contract.GridSpec`); ``size``
    replaces the spatial size (multi-scale test-time augmentation)."""
    contract = bundle.contract
    return model_grid_transform(
        contract.input.spatial_dims,
        contract.inference.mode,
        spatial_size=size or contract.grid.spatial_size,
        spacing=contract.grid.spacing,
        kind=kind,
    )


class ModelGridd(MapTransform, InvertibleTransform):
    """Dictionary form of a model-grid chain for MONAI pipelines: ``chain`` (from
    :func:`model_grid_transform`) on each of ``keys``; invertible, so that MONAI's ``Invertd``
    brings a prediction back onto the input's grid::

        grid = ModelGridd("image", model_grid_transform(3, "sliding_window", spacing=[1, 1, 1]))
        post = Invertd("pred", transform=grid, orig_keys="image", nearest_interp=False)
    """

    def __init__(
        self, keys: KeysCollection, chain: Compose, allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.chain = chain

    def __call__(self, data: Any) -> dict[Any, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.chain(_as_meta(d[key]))
        return d

    def inverse(self, data: Any) -> dict[Any, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.chain.inverse(_as_meta(d[key]))
        return d


@dataclass(frozen=True)
class ModelGrid:
    """What :func:`from_model_grid` needs to undo :func:`to_model_grid`: the chain and MONAI's
    trace of what it did to this input (``applied_operations``) with the model-grid affine."""

    transform: Compose
    applied_operations: list[Any]
    affine: torch.Tensor


def to_model_grid(
    chain: Compose, image: torch.Tensor, intensity: Any = None
) -> tuple[torch.Tensor, ModelGrid]:
    """``image`` ``(C, *spatial)`` through ``chain`` (:func:`model_grid_transform`) as a plain
    tensor, and the :class:`ModelGrid` that brings results back. ``intensity`` (a transform such
    as :class:`medxai.preprocessing.intensity.ScaleIntensityFromBundle`) runs first, on the
    input's voxels."""
    plain = image.as_tensor() if isinstance(image, MetaTensor) else image
    if intensity is not None:
        # an integer image is made float by the intensity transform itself (the same float32
        # values as .float(); the transform can then work in place on that copy)
        plain = intensity(plain.float() if torch.is_floating_point(plain) else plain)
    affine = getattr(image, "affine", None)
    x = MetaTensor(plain, affine=torch.eye(4, dtype=torch.float64) if affine is None else affine)
    out = chain(x)
    grid = ModelGrid(
        transform=chain,
        applied_operations=copy.deepcopy(out.applied_operations),
        affine=torch.as_tensor(out.affine).clone(),
    )
    return out.as_tensor(), grid


def from_model_grid(scores: torch.Tensor, grid: ModelGrid) -> torch.Tensor:
    """``(K, *model_spatial)`` class scores back on the input's grid, by MONAI's inversion of the
    chain (``Compose.inverse`` on the recorded trace), as a plain tensor."""
    data = MetaTensor(
        scores.as_tensor() if isinstance(scores, MetaTensor) else scores,
        affine=grid.affine.clone(),
        applied_operations=copy.deepcopy(grid.applied_operations),
    )
    out = grid.transform.inverse(data)
    return out.as_tensor() if isinstance(out, MetaTensor) else torch.as_tensor(out)
