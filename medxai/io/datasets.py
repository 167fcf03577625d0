"""Find image/label pairs for training and evaluation (dataset folder layouts), and read label
values as class indices.

Accepted layouts:

- **2D pictures**: a folder with ``images/`` and ``masks/`` (or ``labels/``) subfolders, or one
  folder holding both; a mask matches an image by stem, optionally with one of the suffixes
  ``_segmentation``, ``_mask``, ``_label``, ``_seg`` (ISIC's ``ISIC_x_segmentation.png``).
- **3D volumes**: a Medical Segmentation Decathlon ``dataset.json`` (``training`` list of
  ``{"image", "label"}``), or ``imagesTr/`` + ``labelsTr/`` folders (nnU-Net's ``_0000`` channel
  suffix is understood), or ``images/`` + ``labels/`` with matching names.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medxai.errors import InputError

__all__ = [
    "Pair",
    "find_pairs",
    "dataset_json_validation",
    "is_2d_dataset",
    "stem",
    "is_data_file",
    "mask_key",
    "image_key",
    "label_values",
    "PICTURE_SUFFIXES",
    "VOLUME_SUFFIXES",
    "MASK_SUFFIXES",
]

PICTURE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")
VOLUME_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")
MASK_SUFFIXES = ("_segmentation", "_mask", "_label", "_labels", "_seg")
_IMAGE_DIRS = ("images", "imagesTr", "image", "img")
_LABEL_DIRS = ("masks", "labels", "labelsTr", "mask", "label", "segmentations")


@dataclass(frozen=True)
class Pair:
    """One training example: an image file and its label file."""

    image: Path
    label: Path

    @property
    def case_id(self) -> str:
        return stem(self.image)


def stem(path: Path) -> str:
    """The file name without its picture/volume suffix (``.nii.gz`` counts as one)."""
    name = path.name
    for suf in sorted(PICTURE_SUFFIXES + VOLUME_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suf):
            return name[: -len(suf)]
    return path.stem


def is_data_file(path: Path) -> bool:
    """Whether ``path`` is a visible picture or volume file."""
    low = path.name.lower()
    return (
        path.is_file()
        and not low.startswith(".")
        and low.endswith(PICTURE_SUFFIXES + VOLUME_SUFFIXES)
    )


def mask_key(name: str) -> str:
    """``name`` (a stem) without a mask suffix of :data:`MASK_SUFFIXES`."""
    for suf in MASK_SUFFIXES:
        if name.endswith(suf):
            return name[: -len(suf)]
    return name


def image_key(name: str) -> str:
    """``name`` (a stem) without nnU-Net's ``_0000`` channel suffix."""
    return re.sub(r"_\d{4}$", "", name)


def _from_dataset_json(root: Path, split: str = "training") -> list[Pair]:
    spec = json.loads((root / "dataset.json").read_text())
    pairs = []
    for item in spec.get(split, []):
        if not isinstance(item, dict) or "image" not in item or "label" not in item:
            raise InputError(
                f"dataset.json {split!r} entries need 'image' and 'label'",
                path=root / "dataset.json",
            )
        pairs.append(Pair((root / item["image"]).resolve(), (root / item["label"]).resolve()))
    return pairs


def dataset_json_validation(root: str | Path) -> list[Pair]:
    """The ``validation`` list of a Decathlon-style ``dataset.json`` in ``root`` (empty when the
    folder has no dataset.json or the file names no validation cases)."""
    root = Path(root)
    if not (root / "dataset.json").is_file():
        return []
    pairs = _from_dataset_json(root, "validation")
    for pair in pairs:
        for p in (pair.image, pair.label):
            if not p.exists():
                raise InputError("listed in the dataset but missing", path=p)
    return sorted(pairs, key=lambda p: p.case_id)


def find_pairs(root: str | Path) -> list[Pair]:
    """Find image/label pairs under ``root`` (see the module docstring), sorted by case id.

    Raises:
        InputError: the folder is missing, holds no pairs, or an image has no label.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError("training data folder does not exist", path=root)
    if (root / "dataset.json").is_file():
        pairs = _from_dataset_json(root)
    else:
        img_dir = next((root / d for d in _IMAGE_DIRS if (root / d).is_dir()), root)
        lab_dir = next((root / d for d in _LABEL_DIRS if (root / d).is_dir()), root)
        labels = {}
        for p in sorted(lab_dir.iterdir()):
            if not is_data_file(p):
                continue
            name = stem(p)
            if lab_dir == img_dir and mask_key(name) == name:
                continue  # an image, not a mask
            labels[mask_key(name)] = p
        pairs = []
        missing = []
        for p in sorted(img_dir.iterdir()):
            if not is_data_file(p) or p in labels.values():
                continue
            key = image_key(stem(p))
            if key in labels:
                pairs.append(Pair(p, labels[key]))
            else:
                missing.append(p.name)
        if missing:
            raise InputError(
                f"{len(missing)} image(s) have no matching mask, e.g. {missing[:3]}",
                path=root,
                hint="name masks like the image, optionally with _segmentation/_mask/_label, "
                "in a masks/ or labels/ folder",
            )
    if not pairs:
        raise InputError(
            "no image/label pairs found",
            path=root,
            hint="see `medxai train --help` for the folder layouts medxai understands",
        )
    for pair in pairs:
        for p in (pair.image, pair.label):
            if not p.exists():
                raise InputError("listed in the dataset but missing", path=p)
    return sorted(pairs, key=lambda p: p.case_id)


def is_2d_dataset(pairs: list[Pair]) -> bool:
    """Whether the pairs are pictures (2D) rather than volumes."""
    return pairs[0].image.name.lower().endswith(PICTURE_SUFFIXES)


def label_values(arr: np.ndarray) -> np.ndarray:
    """Map a mask to class indices: 0/255 (or 0/1) masks become 0/1; others are kept (uint8)."""
    vals = np.unique(arr)
    if set(vals.tolist()) <= {0, 255}:
        return (arr > 127).astype(np.uint8)
    return arr.astype(np.uint8)
