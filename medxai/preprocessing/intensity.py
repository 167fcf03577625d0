"""Intensity and colour transforms, in MONAI's array/dictionary form.

All transforms take channel-first tensors ``(C, *spatial)``. Colour transforms expect RGB in
``[0, 1]`` (``C == 3``); on other channel counts they change brightness and contrast only.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, RandomizableTransform, Transform

from medxai.errors import MedxaiError

__all__ = [
    "ScaleIntensityFromBundle",
    "ScaleIntensityFromBundled",
    "RandColorJitter",
    "RandColorJitterd",
]


def _as_float_tensor(img: Any) -> torch.Tensor:
    if isinstance(img, torch.Tensor):
        return img.float() if not torch.is_floating_point(img) else img
    return torch.as_tensor(np.asarray(img), dtype=torch.float32)


class ScaleIntensityFromBundle(Transform):
    """Intensity normalisation as a model bundle's ``preprocessing.intensity`` describes it.

    Kinds:
        ``scale``: ``(x - a_min) / (a_max - a_min)``, clipped to [0, 1] when ``clip`` (default).
        ``zscore``: per channel ``(x - mean) / std`` over the non-zero voxels (nnU-Net style for MR).
        ``none``: cast to float only.
    """

    KINDS = ("scale", "zscore", "none")

    def __init__(self, spec: Mapping[str, Any] | None) -> None:
        spec = dict(spec or {"kind": "none"})
        kind = spec.get("kind", "none")
        if kind not in self.KINDS:
            raise MedxaiError(f"unknown intensity kind {kind!r}; use one of {self.KINDS}")
        self.kind = kind
        self.a_min = float(spec.get("a_min", 0.0))
        self.a_max = float(spec.get("a_max", 1.0))
        self.clip = bool(spec.get("clip", True))
        if kind == "scale" and self.a_max <= self.a_min:
            raise MedxaiError(
                f"intensity scale needs a_max > a_min, got {self.a_min}, {self.a_max}"
            )

    def __call__(self, img: Any) -> torch.Tensor:
        x = _as_float_tensor(img)
        if self.kind == "scale":
            if isinstance(img, torch.Tensor) and not torch.is_floating_point(img):
                # x is a float copy of its own: the same operations in place (no new tensors)
                x.sub_(self.a_min).div_(self.a_max - self.a_min)
                return x.clamp_(0.0, 1.0) if self.clip else x
            x = (x - self.a_min) / (self.a_max - self.a_min)
            if self.clip:
                x = x.clamp(0.0, 1.0)
        elif self.kind == "zscore":
            out = torch.empty_like(x)
            for c in range(x.shape[0]):
                ch = x[c]
                sel = ch[ch != 0] if torch.count_nonzero(ch) > 1 else ch.reshape(-1)
                mean, std = sel.mean(), sel.std()
                out[c] = (ch - mean) / (std if std > 1e-8 else 1.0)
            x = out
        return x


class ScaleIntensityFromBundled(MapTransform):
    """Dictionary form of :class:`ScaleIntensityFromBundle`."""

    def __init__(
        self, keys: KeysCollection, spec: Mapping[str, Any] | None, allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.scaler = ScaleIntensityFromBundle(spec)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.scaler(d[key])
        return d


def _rgb_to_grey(x: torch.Tensor) -> torch.Tensor:
    return (0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2])[None]


def _shift_hue(x: torch.Tensor, shift: float) -> torch.Tensor:
    """Rotate hue by ``shift`` turns (YIQ rotation; cheap and smooth)."""
    theta = 2 * np.pi * shift
    cos, sin = float(np.cos(theta)), float(np.sin(theta))
    to_yiq = torch.tensor(
        [[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], dtype=x.dtype
    )
    rot = torch.tensor([[1, 0, 0], [0, cos, -sin], [0, sin, cos]], dtype=x.dtype)
    m = torch.linalg.inv(to_yiq) @ rot @ to_yiq
    return torch.einsum("ij,j...->i...", m, x)


class RandColorJitter(RandomizableTransform):
    """Random brightness, contrast, saturation and hue changes of an RGB image in [0, 1].

    Args:
        prob: probability of applying the jitter at all.
        brightness, contrast, saturation: maximal relative change (0.2 means factors in
            [0.8, 1.2]).
        hue: maximal hue rotation in turns (0.05 = 18 degrees).
    """

    def __init__(
        self,
        prob: float = 0.8,
        brightness: float = 0.2,
        contrast: float = 0.2,
        saturation: float = 0.2,
        hue: float = 0.03,
    ) -> None:
        RandomizableTransform.__init__(self, prob)
        self.ranges = (brightness, contrast, saturation, hue)
        self.factors = (1.0, 1.0, 1.0, 0.0)

    def randomize(self, data: Any = None) -> None:
        super().randomize(None)
        b, c, s, h = self.ranges
        self.factors = (
            self.R.uniform(1 - b, 1 + b),
            self.R.uniform(1 - c, 1 + c),
            self.R.uniform(1 - s, 1 + s),
            self.R.uniform(-h, h),
        )

    def __call__(self, img: Any, randomize: bool = True) -> torch.Tensor:
        if randomize:
            self.randomize()
        x = _as_float_tensor(img)
        if not self._do_transform:
            return x
        b, c, s, h = self.factors
        x = x * b
        mean = x.mean() if x.shape[0] != 3 else _rgb_to_grey(x).mean()
        x = (x - mean) * c + mean
        if x.shape[0] == 3:
            grey = _rgb_to_grey(x)
            x = (x - grey) * s + grey
            if h:
                x = _shift_hue(x, h)
        return x.clamp(0.0, 1.0)


class RandColorJitterd(RandomizableTransform, MapTransform):
    """Dictionary form of :class:`RandColorJitter`; the same jitter for every key."""

    def __init__(
        self,
        keys: KeysCollection,
        prob: float = 0.8,
        brightness: float = 0.2,
        contrast: float = 0.2,
        saturation: float = 0.2,
        hue: float = 0.03,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        self.jitter = RandColorJitter(1.0, brightness, contrast, saturation, hue)

    def set_random_state(
        self, seed: int | None = None, state: np.random.RandomState | None = None
    ) -> RandColorJitterd:
        super().set_random_state(seed, state)
        self.jitter.set_random_state(seed, state)
        return self

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        self.randomize(None)
        if not self._do_transform:
            return d
        self.jitter.randomize()
        for key in self.key_iterator(d):
            d[key] = self.jitter(d[key], randomize=False)
        return d
