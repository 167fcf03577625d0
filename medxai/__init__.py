"""medxai: segment medical images and explain the segmentation.

Public API (imported lazily, so ``import medxai`` and the CLI start fast)::

    import medxai
    image = medxai.read_image("study/")            # MetaTensor (C, I, J[, K]), RAS affine
    model = medxai.load_model()                    # the bundled ISIC 2018 lesion model
    pred = medxai.predict(model, image)            # labels/probabilities on the input grid
    saliency = medxai.explain(model.network, x)    # saliency of a network on a batch
    results = medxai.segment("photo.jpg", output="out/")   # what `medxai segment` does

Axis order everywhere: channel-first ``(C, I, J[, K])``, ``I`` along image columns, ``J`` along
rows, ``K`` across slices; affines map voxel indices to RAS millimetres (MONAI's convention).
"""

from __future__ import annotations

import importlib
from typing import Any

from medxai._version import __version__

_EXPORTS = {
    "read_image": "medxai.io.readers",
    "load_image": "medxai.io.readers",
    "detect_form": "medxai.io.readers",
    "LoadedImage": "medxai.io.types",
    "DicomSource": "medxai.io.types",
    "MedxaiReader": "medxai.io.monai_reader",
    "load_model": "medxai.models.registry",
    "list_models": "medxai.models.registry",
    "load_bundle": "medxai.models.bundle",
    "save_bundle": "medxai.models.bundle",
    "ModelBundle": "medxai.models.bundle",
    "predict": "medxai.inference",
    "Prediction": "medxai.inference",
    "explain": "medxai.explain",
    "segment": "medxai.pipeline",
    "segment_path": "medxai.pipeline",
    "SegmentOptions": "medxai.pipeline",
    "SegmentResult": "medxai.pipeline",
    "train": "medxai.training.trainer",
    "TrainConfig": "medxai.training.trainer",
    "MedxaiError": "medxai.errors",
}

__all__ = ["__version__", *sorted(_EXPORTS)]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'medxai' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
