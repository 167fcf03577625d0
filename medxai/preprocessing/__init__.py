"""Onto the model grid: intensity normalisation, resampling and reorientation shared by inference
and training (the layer between :mod:`medxai.models` and :mod:`medxai.inference`).

Images are channel-first ``(C, *spatial)`` tensors; affines are RAS (MONAI's convention).
"""

from medxai.preprocessing.intensity import (
    RandColorJitter,
    RandColorJitterd,
    ScaleIntensityFromBundle,
    ScaleIntensityFromBundled,
)
from medxai.preprocessing.model_grid import (
    ModelGrid,
    bundle_model_grid,
    from_model_grid,
    model_grid_transform,
    to_model_grid,
)
from medxai.preprocessing.spatial import resize_image, resize_label, resize_probabilities

__all__ = [
    "ScaleIntensityFromBundle",
    "ScaleIntensityFromBundled",
    "RandColorJitter",
    "RandColorJitterd",
    "ModelGrid",
    "bundle_model_grid",
    "from_model_grid",
    "model_grid_transform",
    "to_model_grid",
    "resize_image",
    "resize_label",
    "resize_probabilities",
]
