"""medxai's reader as a MONAI ``ImageReader``, for ``LoadImage(reader=MedxaiReader())`` and
``LoadImaged``: every form medxai reads (DICOM series and multi-frame, pictures, NIfTI, NRRD)
through MONAI's own loading transforms, with the same arrays and affines as
:func:`medxai.read_image`."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from monai.data.image_reader import ImageReader

from medxai.errors import MedxaiError
from medxai.io.readers import detect_form, load_image
from medxai.io.types import LoadedImage

__all__ = ["MedxaiReader"]


class MedxaiReader(ImageReader):
    """MONAI ``ImageReader`` backed by :func:`medxai.io.readers.load_image`.

    ``get_data`` returns the channel-first array with ``original_channel_dim = 0`` and the RAS
    affine, so ``LoadImage(ensure_channel_first=True)`` and MONAI's spatial transforms (and
    ``Invertd``) work as with MONAI's own readers. The DICOM headers are not put in the meta dict
    (they do not collate); use :func:`medxai.load_image` to get them.
    """

    # MONAI's ImageReader types the names as str | os.PathLike (one or a sequence)
    def verify_suffix(self, filename: Sequence[str | os.PathLike] | str | os.PathLike) -> bool:
        names = [filename] if isinstance(filename, (str, os.PathLike)) else list(filename)
        try:
            return all(detect_form(Path(n)) is not None for n in names)
        except MedxaiError:
            return False

    def read(
        self, data: Sequence[str | os.PathLike] | str | os.PathLike, **kwargs: Any
    ) -> LoadedImage | list[LoadedImage]:
        if isinstance(data, (str, os.PathLike)):
            return load_image(Path(data))
        return [load_image(Path(d)) for d in data]

    def get_data(self, img: LoadedImage | list[LoadedImage]) -> tuple[np.ndarray, dict[str, Any]]:
        items = img if isinstance(img, list) else [img]
        arrays, meta = [], None
        for item in items:
            t = item.image
            arrays.append(t.numpy())
            if meta is None:
                meta = {k: v for k, v in t.meta.items() if k not in ("affine",)}
                meta["affine"] = t.affine.numpy().copy()
                meta["original_affine"] = t.affine.numpy().copy()
                meta["spatial_shape"] = np.asarray(t.shape[1:])
                meta["original_channel_dim"] = 0
        assert meta is not None
        array = arrays[0] if len(arrays) == 1 else np.concatenate(arrays, axis=0)
        return array, meta
