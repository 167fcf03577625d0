"""MONAI-style transforms (array form ``X`` and dictionary form ``Xd``)."""

from medxai.preprocessing.intensity import (
    RandColorJitter,
    RandColorJitterd,
    ScaleIntensityFromBundle,
    ScaleIntensityFromBundled,
)
from medxai.preprocessing.spatial import resize_image, resize_label, resize_probabilities
from medxai.transforms.model import (
    BlendOverlay,
    BlendOverlayd,
    Predict,
    Predictd,
    Saliency,
    Saliencyd,
    SaveSegmentation,
    SaveSegmentationd,
)

__all__ = [
    "Predict",
    "Predictd",
    "Saliency",
    "Saliencyd",
    "BlendOverlay",
    "BlendOverlayd",
    "SaveSegmentation",
    "SaveSegmentationd",
    "ScaleIntensityFromBundle",
    "ScaleIntensityFromBundled",
    "RandColorJitter",
    "RandColorJitterd",
    "resize_image",
    "resize_label",
    "resize_probabilities",
]
