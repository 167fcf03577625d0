"""Photographs and other 2D raster files (JPEG, PNG, TIFF, BMP) read with Pillow.

Axis order follows MONAI's ``LoadImage``: the array is channel-first ``(C, W, H)``, i.e. the
first spatial index runs along image columns (x) and the second along rows (y). Photos have no
patient geometry; their affine is the one ITK and 3D Slicer give a 2D picture: origin 0, spacing
1 (pixels), LPS identity directions, which is ``diag(-1, -1, 1, 1)`` in MONAI's RAS convention.
A NIfTI written with that affine therefore lies exactly on the picture when both are opened in
Slicer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from medxai.errors import CorruptInputError, UnsupportedInputError

__all__ = ["PHOTO_AFFINE", "read_photo_array", "read_photo"]

#: RAS affine of a pixel grid with LPS identity directions, spacing 1 and origin 0.
PHOTO_AFFINE = np.diag([-1.0, -1.0, 1.0, 1.0])

# Pillow registers JPEG, PNG, BMP, GIF and PPM first and loads its other plugins (about 50
# modules, ~0.2-0.4 s) on the first picture of another format, once per process: not at import
# (benchmarks/bench_startup.py).


def read_photo_array(path: str | Path) -> tuple[np.ndarray, dict[str, Any]]:
    """Decode a raster picture to a channel-first ``(C, W, H)`` uint8/uint16 array.

    RGB(A), palette and CMYK pictures become 3-channel RGB (alpha dropped); greyscale stays 1
    channel. EXIF orientation is not applied (the pixel grid is kept as stored, as ITK does).

    Returns:
        the array and a dict with ``format``, ``mode`` (Pillow's) and ``original_size`` (W, H).
    """
    path = Path(path)
    try:
        with Image.open(path) as im:
            fmt = im.format
            mode = im.mode
            size = im.size
            im.load()
            if mode in ("1", "L", "I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(im.convert("I") if mode == "I" else im)
                if arr.dtype == bool:
                    arr = arr.astype(np.uint8) * 255
                arr = arr[None]
            elif mode in ("LA",):
                arr = np.asarray(im.getchannel(0))[None]
            else:
                arr = np.moveaxis(np.asarray(im.convert("RGB")), -1, 0)
    except UnidentifiedImageError as exc:
        raise UnsupportedInputError(
            "is not a picture Pillow can read",
            path=path,
            hint="medxai reads JPEG, PNG, TIFF and BMP pictures, DICOM, NIfTI, NRRD and MHA",
        ) from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise CorruptInputError(
            f"picture data cannot be decoded ({exc})",
            path=path,
            hint="the file may be truncated; export it again",
        ) from exc
    # (C, H, W) -> (C, W, H): MONAI's column-first spatial order
    arr = np.ascontiguousarray(np.swapaxes(arr, 1, 2))
    return arr, {"format": fmt, "mode": mode, "original_size": size}


def read_photo(path: str | Path) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Read a picture: ``(array (C, W, H), affine (4x4 RAS), meta)``."""
    arr, meta = read_photo_array(path)
    return arr, PHOTO_AFFINE.copy(), meta
