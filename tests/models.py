"""Small models trained by `medxai train` for the tests (seconds on a CPU).

Their predictions are not good; the tests check plumbing, geometry and validity, which do not
depend on the model's quality. The bundled model's quality is tested in test_bundled_model.py.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image

from medxai.samples import ct_affine_ras, make_ct_volume, make_dermoscopy_photo
from medxai.training.trainer import TrainConfig, train


def make_picture_dataset(root: Path, n: int = 8, grey: bool = False) -> Path:
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        rgb, mask = make_dermoscopy_photo(64, 48, seed=100 + i)
        img = Image.fromarray(rgb)
        if grey:
            img = img.convert("L")
        img.save(root / "images" / f"case{i:02d}.png")
        Image.fromarray(mask * 255).save(root / "masks" / f"case{i:02d}_segmentation.png")
    return root


def train_picture_model(root: Path, grey: bool = False) -> Path:
    data = make_picture_dataset(root / "data", grey=grey)
    out = root / "bundle"
    train(TrainConfig(data=str(data), output=str(out), spatial_size=[32, 32], epochs=2,
                      batch_size=4, width=4, depth=3, val_fraction=0.25,
                      name="test-grey-unet" if grey else "test-rgb-unet", label_names=["lesion"]))
    return out


def make_volume_dataset(root: Path, n: int = 3) -> Path:
    (root / "imagesTr").mkdir(parents=True, exist_ok=True)
    (root / "labelsTr").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        vol, lab = make_ct_volume(seed=i)
        aff = ct_affine_ras(vol.shape)
        nib.save(nib.Nifti1Image(vol, aff), str(root / "imagesTr" / f"ct_{i:03d}_0000.nii.gz"))
        nib.save(nib.Nifti1Image(lab, aff), str(root / "labelsTr" / f"ct_{i:03d}.nii.gz"))
    return root


def train_volume_model(root: Path, spacing: list[float] | None = None) -> Path:
    data = make_volume_dataset(root / "data")
    out = root / "bundle"
    train(TrainConfig(data=str(data), output=str(out), roi_size=[32, 32, 16], epochs=1,
                      batch_size=2, width=4, depth=3, val_fraction=0.34, spacing=spacing,
                      intensity={"kind": "scale", "a_min": -1000.0, "a_max": 1000.0},
                      name="test-ct-unet", label_names=["lesion"], modalities=["CT"]))
    return out
