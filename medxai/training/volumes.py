"""3D training data: volumes read with medxai's reader, brought to the model grid exactly as
:func:`medxai.inference.prepare_input` does at inference, through the same chain of MONAI
invertible transforms (bundle intensity normalisation, MONAI's RAS ``Orientation``, optional
resampling to ``spacing``), then sampled as random patches."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor

from medxai.errors import InputError
from medxai.io.datasets import Pair
from medxai.preprocessing.intensity import ScaleIntensityFromBundle
from medxai.preprocessing.model_grid import Kind, model_grid_transform, to_model_grid
from medxai.training.validation import dice_per_case

__all__ = ["VolumeData"]


def _default_intensity(modality: str) -> dict[str, Any]:
    if modality == "CT":
        return {"kind": "scale", "a_min": -1000.0, "a_max": 1000.0}
    return {"kind": "zscore"}


def _rotation(angles: np.ndarray) -> np.ndarray:
    rx, ry, rz = angles
    cx, sx, cy, sy, cz, sz = np.cos(rx), np.sin(rx), np.cos(ry), np.sin(ry), np.cos(rz), np.sin(rz)
    mx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    my = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    mz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return mz @ my @ mx


def augment_patch(
    x: torch.Tensor, y: torch.Tensor, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """3D training augmentation of one patch (``--augment volume``): with probability 0.7 a
    rotation (up to 15 degrees about each axis) and an isotropic scaling (0.85-1.15) about the
    patch centre, image resampled linearly (border values outside) and labels by nearest
    neighbour; then intensity scale (0.9-1.1) and shift (+-0.1 SD), gamma (0.7-1.5, on the
    patch's own range) and Gaussian noise (SD up to 0.05), each with probability 0.3-0.5.
    Labels keep their meaning: no axis is mirrored here (that is ``flip_axes``)."""
    # Kept, not MONAI's RandAffined + intensity transforms: every draw comes from the run's seeded
    # ``rng`` (MONAI's take their own RandomState), so the seeded 3D runs (the hippocampus card's)
    # stay reproducible; image and label share one grid in one grid_sample each.
    if rng.random() < 0.7:
        angles = rng.uniform(-np.pi / 12, np.pi / 12, size=3)
        scale = float(rng.uniform(0.85, 1.15))
        theta = np.zeros((1, 3, 4), dtype=np.float32)
        # affine_grid works in normalised (x, y, z) = (last, middle, first) axis coordinates:
        # conjugate by the half-sizes so that the rotation is rigid in voxels
        half = np.diag(np.asarray(x.shape[1:][::-1], dtype=np.float64))
        theta[0, :, :3] = np.linalg.inv(half) @ _rotation(angles) @ half / scale
        t = torch.from_numpy(theta)
        grid = torch.nn.functional.affine_grid(t, [1, *x.shape], align_corners=False)
        x = torch.nn.functional.grid_sample(
            x[None].float(), grid, mode="bilinear", padding_mode="border", align_corners=False
        )[0]
        y = torch.nn.functional.grid_sample(
            y[None].float(), grid, mode="nearest", padding_mode="zeros", align_corners=False
        )[0].to(torch.uint8)
    if rng.random() < 0.5:
        x = x * float(rng.uniform(0.9, 1.1)) + float(rng.uniform(-0.1, 0.1))
    if rng.random() < 0.3:
        lo, hi = float(x.min()), float(x.max())
        if hi > lo:
            gamma = float(rng.uniform(0.7, 1.5))
            x = ((x - lo) / (hi - lo)).clamp(0, 1) ** gamma * (hi - lo) + lo
    if rng.random() < 0.3:
        gen = torch.Generator().manual_seed(int(rng.integers(2**31)))
        x = x + torch.randn(x.shape, generator=gen) * float(rng.uniform(0.0, 0.05))
    return x.contiguous(), y.contiguous()


class VolumeData:
    """Volumes and labels held in memory on the model grid, with a patch sampler.

    Args:
        pairs, val_pairs: training and validation image/label files.
        cfg: the :class:`~medxai.training.trainer.TrainConfig` (uses roi_size, spacing,
            intensity, samples_per_volume, seed).
        say: progress callback.
    """

    def __init__(
        self, pairs: Sequence[Pair], val_pairs: Sequence[Pair], cfg: Any, say: Callable[[str], None]
    ) -> None:
        from medxai.io.readers import read_image

        self.roi = [int(r) for r in cfg.roi_size]
        self.samples_per_volume = int(cfg.samples_per_volume)
        self.seed = int(cfg.seed)
        flips = getattr(cfg, "flip_axes", None)
        self.flip_axes = (0, 1, 2) if flips is None else tuple(int(a) for a in flips)
        self.spatial_aug = getattr(cfg, "augment", "photo") == "volume"
        first = read_image(pairs[0].image)
        self.intensity = cfg.intensity or _default_intensity(str(first.meta.get("modality", "")))
        self._scale = ScaleIntensityFromBundle(self.intensity)
        say(f"loading {len(pairs)} training and {len(val_pairs)} validation volumes")
        self.train = [self._load(p, cfg.spacing) for p in pairs]
        self.val = [self._load(p, cfg.spacing) for p in val_pairs]
        self.in_channels = int(self.train[0][0].shape[0])
        self.num_classes = int(max(int(lab.max()) for _, lab in self.train + self.val)) + 1

    def _load(
        self, pair: Pair, spacing: Sequence[float] | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        from medxai.io.readers import read_image

        img = read_image(pair.image)
        lab = read_image(pair.label)
        if tuple(img.shape[1:]) != tuple(lab.shape[1:]):
            raise InputError(
                f"image grid {tuple(img.shape[1:])} differs from label grid "
                f"{tuple(lab.shape[1:])} ({pair.label.name})",
                path=pair.image,
            )
        if img.ndim != 4:
            raise InputError("is not a 3D volume", path=pair.image)
        x, _ = to_model_grid(self._grid(spacing, "image"), img, self._scale)
        # the label map on the image's grid (same voxels, checked above): the image's affine,
        # whatever the label file's header says (exported masks often have none)
        y, _ = to_model_grid(
            self._grid(spacing, "label"), MetaTensor(lab.as_tensor()[:1].long(), affine=img.affine)
        )
        return x.contiguous(), y.to(torch.uint8).contiguous()

    @staticmethod
    def _grid(spacing: Sequence[float] | None, kind: Kind) -> Any:
        """The model-grid chain inference uses for a 3D sliding-window model
        (:func:`medxai.preprocessing.model_grid_transform`), for images or label maps."""
        return model_grid_transform(3, "sliding_window", spacing=spacing, kind=kind)

    def _patch(
        self, x: torch.Tensor, y: torch.Tensor, rng: np.random.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        pad = [max(0, r - s) for r, s in zip(self.roi, x.shape[1:])]
        if any(pad):
            spec = []
            for p in reversed(pad):
                spec += [p // 2, p - p // 2]
            x = torch.nn.functional.pad(x, spec)
            y = torch.nn.functional.pad(y, spec)
        shape = x.shape[1:]
        fg = torch.nonzero(y[0] > 0) if rng.random() < 0.5 else None
        if fg is not None and len(fg):
            centre = fg[int(rng.integers(len(fg)))].tolist()
            start = [min(max(0, c - r // 2), s - r) for c, r, s in zip(centre, self.roi, shape)]
        else:
            start = [int(rng.integers(0, s - r + 1)) for r, s in zip(self.roi, shape)]
        sl = tuple(slice(s, s + r) for s, r in zip(start, self.roi))
        px, py = x[(slice(None),) + sl], y[(slice(None),) + sl]
        for d in range(3):
            if rng.random() < 0.5 and d in self.flip_axes:
                px, py = px.flip(d + 1), py.flip(d + 1)
        if self.spatial_aug:
            px, py = augment_patch(px, py, rng)
        return px, py

    def train_batches(
        self, epoch: int, batch_size: int
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Random patches (half centred on foreground), flipped at random along ``flip_axes``
        (RAS axes: 0 left-right, 1 posterior-anterior, 2 inferior-superior), in batches."""
        rng = np.random.default_rng(self.seed * 1009 + epoch)
        items = [
            self._patch(x, y, rng) for x, y in self.train for _ in range(self.samples_per_volume)
        ]
        order = rng.permutation(len(items))
        for i in range(0, len(order), batch_size):
            idx = order[i : i + batch_size]
            if len(idx) < 2 and len(order) > 1:
                continue
            yield (
                torch.stack([items[j][0] for j in idx]),
                torch.stack([items[j][1] for j in idx]).long(),
            )

    def validate(self, net: torch.nn.Module, device: torch.device) -> float:
        """Mean foreground Dice of sliding-window predictions on the validation volumes."""
        from monai.inferers import sliding_window_inference

        scores = []
        for x, y in self.val:
            logits = sliding_window_inference(
                x[None].to(device),
                self.roi,
                4,
                net,
                overlap=0.25,
                mode="gaussian",
                device=torch.device("cpu"),
            )
            # a segmentation network has one output head: MONAI gives back a tensor
            assert isinstance(logits, torch.Tensor)
            pred = logits.argmax(1, keepdim=True)
            scores.append(dice_per_case(pred, y[None].long(), max(self.num_classes, 2)))
        return float(torch.cat(scores).mean())
