"""medxai's reading as a MONAI ``ImageReader`` that gives what MONAI's own readers give, for a
bundle's own ``LoadImaged``.

:class:`medxai.io.monai_reader.MedxaiReader` gives medxai's channel-first array (its public
use: ``LoadImaged(reader=MedxaiReader())`` without ``EnsureChannelFirstd``). A MONAI bundle's
preprocessing is written for what MONAI's readers give instead, and its ``EnsureChannelFirstd``
(``channel_dim="no_channel"``, ``channel_dim=-1``, or from the meta) depends on it.
:class:`MonaiLayoutReader` gives that layout, from medxai's reading (DICOM series, multi-frame,
DX/CR as displayed with their VOI LUT, DICOM photos, NIfTI, NRRD, pictures):

- a single-channel image has no channel axis and ``original_channel_dim`` NaN (MONAI 1.6's
  "no_channel"), as ``NibabelReader``/``PydicomReader``/``PILReader`` give it;
- colour (a picture, a DICOM photo: RGB/YBR/palette) is the last axis,
  ``original_channel_dim = -1``, as ``PILReader``/``PydicomReader`` give it;
- the channels of a multi-channel volume (a 4D NIfTI, ``medxai segment --channels``) are the
  first axis, ``original_channel_dim = 0``: what ``LoadImaged`` gives for one file per channel
  (the form of e.g. BraTS's datalist, whose preprocessing has no ``EnsureChannelFirstd``). For a
  single 4D NIfTI MONAI's ``NibabelReader`` gives the channels last instead; after
  ``EnsureChannelFirstd`` the two are the same;
- pictures (PNG/JPEG...) are ``(W, H[, C])`` as ``PILReader`` gives them (it transposes to
  width first), with no affine in the meta (``LoadImage`` then sets the identity, as for
  ``PILReader``); every other form has ``affine`` = ``original_affine`` in RAS and
  ``space = "RAS"``, as ``NibabelReader``/``PydicomReader`` give them;
- ``spatial_shape``; ``LoadImage`` adds ``filename_or_obj``.

The array keeps medxai's dtype (``LoadImage`` converts it to its ``dtype``, float32 by default).
DICOM series keep medxai's slice order (ascending along the slice normal, the affine saying
so); MONAI's ``PydicomReader`` may stack the other way round, which ``Orientationd`` makes the
same array.

An image already read can be served to the bundle's ``LoadImaged`` without reading it again:
``with reader.serving(image): preprocessing({"image": source})`` (per thread).
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medxai.io.monai_reader import MedxaiReader
from medxai.io.readers import load_image

__all__ = ["MonaiLayoutReader", "monai_layout"]


def monai_layout(image: torch.Tensor) -> tuple[np.ndarray, dict[str, Any]]:
    """``(array, meta)`` as MONAI's readers give them, for medxai's channel-first ``image``
    (a ``MetaTensor`` from :func:`medxai.read_image`; see the module docstring)."""
    meta_in = dict(getattr(image, "meta", {}) or {})
    arr = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    colour = meta_in.get("medxai_form") == "picture" or str(
        meta_in.get("photometric_interpretation") or ""
    ).upper().startswith(("RGB", "YBR", "PALETTE"))
    channel_dim: float | int
    if arr.shape[0] == 1:
        data, channel_dim = arr[0], float("nan")
    elif colour:
        data, channel_dim = np.moveaxis(arr, 0, -1), -1
    else:
        data, channel_dim = arr, 0
    meta: dict[str, Any] = {}
    if meta_in.get("medxai_form") != "picture":
        affine = getattr(image, "affine", None)
        affine = np.eye(4) if affine is None else np.asarray(torch.as_tensor(affine).numpy())
        meta["affine"] = affine.astype(np.float64).copy()
        meta["original_affine"] = affine.astype(np.float64).copy()
        meta["space"] = "RAS"
    meta["spatial_shape"] = np.asarray(arr.shape[1:])
    meta["original_channel_dim"] = channel_dim
    return np.ascontiguousarray(data), meta


class MonaiLayoutReader(MedxaiReader):
    """MONAI ``ImageReader`` over :func:`medxai.io.readers.load_image`, in MONAI's readers'
    layout (see the module docstring). medxai puts it in place of the ``reader`` of a bundle's
    own ``LoadImaged``, whatever reader the config names."""

    def __init__(self, **_: Any) -> None:
        super().__init__()
        self._served = threading.local()

    def __getstate__(self) -> dict[str, Any]:
        # picklable (a bundle sent to a worker process): the served image is per thread
        state = self.__dict__.copy()
        state.pop("_served", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._served = threading.local()

    @contextlib.contextmanager
    def serving(self, image: torch.Tensor) -> Iterator[None]:
        """Within the block, ``read`` (in this thread) gives ``image`` (medxai's channel-first
        ``MetaTensor``) whatever the file name, instead of reading it again."""
        previous = getattr(self._served, "image", None)
        self._served.image = image
        try:
            yield
        finally:
            self._served.image = previous

    def verify_suffix(self, filename: Sequence[str | os.PathLike] | str | os.PathLike) -> bool:
        if getattr(self._served, "image", None) is not None:
            return True
        return super().verify_suffix(filename)

    def read(self, data: Sequence[str | os.PathLike] | str | os.PathLike, **kwargs: Any) -> Any:
        served = getattr(self._served, "image", None)
        if served is not None:
            return [served]
        names = [data] if isinstance(data, (str, os.PathLike)) else list(data)
        return [load_image(Path(n)).image for n in names]

    def get_data(self, img: Any) -> tuple[np.ndarray, dict[str, Any]]:
        items = img if isinstance(img, list) else [img]
        laid = [monai_layout(t) for t in items]
        if len(laid) == 1:
            return laid[0]
        # several files: stacked on a new first axis, as MONAI's readers stack them
        meta = dict(laid[0][1])
        meta["original_channel_dim"] = 0
        return np.stack([a for a, _ in laid]), meta
