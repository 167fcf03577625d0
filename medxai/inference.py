"""Device choice, whole-image and sliding-window prediction, inversion to the input grid.

The prediction of a bundle's network for an image read by :func:`medxai.read_image` comes back on
the image's own grid: class probabilities ``(K, *spatial)`` and a label map ``(1, *spatial)``,
with the input's affine.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from medxai.errors import InputError, ModelMismatchError

__all__ = ["resolve_device", "autocast_context", "Prediction", "predict", "check_input_fits"]

DEVICE_CHOICES = ("auto", "cpu", "cuda", "cuda:N", "mps")


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """Turn ``auto|cpu|cuda[:N]|mps`` into a device; ``auto`` prefers CUDA, then MPS, then CPU.

    Raises:
        InputError: the spec is unknown or names a device this machine does not have.
    """
    if isinstance(spec, torch.device):
        return spec
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(spec)
    except RuntimeError as exc:
        raise InputError(f"unknown device {spec!r}", hint=f"use one of {DEVICE_CHOICES}") from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError("CUDA was asked for but no CUDA device is available",
                             hint="use --device cpu, or install a CUDA build of torch")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise InputError(f"{spec} asked for, but only {torch.cuda.device_count()} CUDA "
                             "device(s) exist")
    elif dev.type == "mps":
        if getattr(torch.backends, "mps", None) is None or not torch.backends.mps.is_available():
            raise InputError("MPS was asked for but is not available here", hint="use --device cpu")
    elif dev.type != "cpu":
        raise InputError(f"unsupported device {spec!r}", hint=f"use one of {DEVICE_CHOICES}")
    return dev


def autocast_context(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """Mixed precision (float16 autocast) on CUDA; nothing elsewhere."""
    if device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.float16)
    return contextlib.nullcontext()


@dataclass
class Prediction:
    """A segmentation on the input's grid.

    Attributes:
        probabilities: ``(K, *spatial)`` float32 softmax scores, K = number of labels incl. 0.
        labels: ``(1, *spatial)`` uint8 label map (argmax).
        affine: the input's 4x4 RAS affine (MONAI convention).
        seconds: wall time of the forward passes (and their inversion).
    """

    probabilities: torch.Tensor
    labels: torch.Tensor
    affine: torch.Tensor
    seconds: float


def _iter_flips(spatial_dims: int) -> Iterator[tuple[int, ...]]:
    yield ()
    for d in range(spatial_dims):
        yield (2 + d,)


def check_input_fits(bundle: Any, image: torch.Tensor, source: str | None = None) -> None:
    """Raise :class:`ModelMismatchError` when ``image`` (C, *spatial) cannot go to ``bundle``."""
    meta = getattr(image, "meta", {}) or {}
    spatial = tuple(image.shape[1:])
    want_dims = bundle.spatial_dims
    effective_dims = sum(1 for s in spatial if s > 1) if want_dims == 2 else len(spatial)
    if want_dims == 2 and len(spatial) == 3 and spatial[2] > 1:
        raise ModelMismatchError(
            f"model {bundle.name!r} segments 2D {_channels_word(bundle.in_channels)} pictures, but "
            f"this input is a volume of {spatial[0]}x{spatial[1]}x{spatial[2]} voxels "
            f"(modality {meta.get('modality', 'unknown')})",
            path=source, hint="choose a 3D model with --model (see `medxai models`)")
    if want_dims == 3 and (len(spatial) < 3 or effective_dims < 3):
        raise ModelMismatchError(
            f"model {bundle.name!r} segments 3D volumes, but this input is a 2D image "
            f"{'x'.join(map(str, spatial))}", path=source,
            hint="choose a 2D model with --model (see `medxai models`)")
    if image.shape[0] != bundle.in_channels:
        raise ModelMismatchError(
            f"model {bundle.name!r} expects {_channels_word(bundle.in_channels)} input "
            f"({bundle.in_channels} channel(s)), this input has {image.shape[0]}",
            path=source, hint="choose a model made for this kind of image")


def _channels_word(n: int) -> str:
    return {1: "greyscale", 3: "RGB colour"}.get(n, f"{n}-channel")


def predict(bundle: Any, image: torch.Tensor, *, device: str | torch.device = "auto",
            roi_size: Sequence[int] | None = None, overlap: float | None = None,
            sw_batch_size: int | None = None, source: str | None = None) -> Prediction:
    """Segment ``image`` with ``bundle``; see :mod:`medxai.inference.engine` for the details."""
    from medxai.inference_engine import run_prediction

    return run_prediction(bundle, image, device=device, roi_size=roi_size, overlap=overlap,
                          sw_batch_size=sw_batch_size, source=source)
