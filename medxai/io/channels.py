"""Several co-registered single-channel files as one multi-channel image (BraTS: T1c, T1, T2,
FLAIR), and that image as the 4D NIfTI that multi-channel bundles take.

MONAI bundles with several input channels list one file per channel in their datalist
(``LoadImaged`` stacks them channel-first); medxai takes one input per case, so the files are
stacked first: :func:`load_channels` / ``medxai segment --channels A B C D`` (in memory), or
:func:`stack_channels` / ``medxai channels A B C D -o case.nii.gz`` (a file).
The files must be on one grid (same voxel shape and affine), as BraTS ships them; nothing is
resampled.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medxai.errors import InputError
from medxai.io.readers import load_image
from medxai.io.types import LoadedImage

__all__ = [
    "load_channels",
    "stack_channels",
    "check_channel_count",
    "write_channel_stack",
    "AFFINE_TOLERANCE_MM",
]

#: How far two files' affines may differ (mm, per matrix entry) and still be one grid.
AFFINE_TOLERANCE_MM = 1e-3


def load_channels(paths: Sequence[str | Path]) -> LoadedImage:
    """Read each file (any form medxai reads: NIfTI, NRRD, MHA, a DICOM series folder, ...) and
    stack them channel-first in the given order, as one :class:`LoadedImage` (``medxai segment
    --channels``): the first file's meta data, affine and DICOM sources (the grid is the same),
    its path, and ``extra["channels"]``: the files in order.

    Raises:
        InputError: fewer than two files, a file with more than one channel, or files on
            different grids (the message names the file and both grids).
    """
    from monai.data import MetaTensor

    files = [Path(p) for p in paths]
    if len(files) < 2:
        raise InputError(
            f"{len(files)} file given; stacking channels needs two or more",
            hint="give one file per channel, in the bundle's channel order",
        )
    first: LoadedImage | None = None
    arrays = []
    for path in files:
        loaded = load_image(path)
        img = loaded.image
        if int(img.shape[0]) != 1:
            raise InputError(
                f"has {int(img.shape[0])} channels; each file must hold one channel (sequence)",
                path=path,
                hint="give one file per sequence, or pass a multi-channel file to segment as is",
            )
        if first is None:
            first = loaded
        else:
            _check_same_grid(path, img, files[0], first.image)
        arrays.append(np.asarray(img.as_tensor()[0].numpy(), dtype=np.float32))
    assert first is not None
    stacked = MetaTensor(
        torch.from_numpy(np.stack(arrays)),
        affine=first.image.affine,
        meta={k: v for k, v in first.image.meta.items() if k != "affine"},
    )
    extra = dict(first.extra)
    extra["channels"] = [str(p) for p in files]
    return LoadedImage(image=stacked, dicom=first.dicom, path=first.path, extra=extra)


def _check_same_grid(path: Path, img: Any, first_path: Path, first: Any) -> None:
    affine = np.asarray(img.affine, dtype=np.float64)
    first_affine = np.asarray(first.affine, dtype=np.float64)
    shape = tuple(int(s) for s in img.shape[1:])
    first_shape = tuple(int(s) for s in first.shape[1:])
    if shape != first_shape or not np.allclose(affine, first_affine, atol=AFFINE_TOLERANCE_MM):
        raise InputError(
            f"is not on the grid of {first_path.name}: {shape} voxels with affine "
            f"{np.round(affine, 3).tolist()}, there {first_shape} with "
            f"{np.round(first_affine, 3).tolist()}",
            path=path,
            hint="the channels must be co-registered on one grid (as BraTS ships them); "
            "resample them onto one grid first",
        )


def stack_channels(paths: Sequence[str | Path]) -> tuple[np.ndarray, np.ndarray]:
    """:func:`load_channels` as arrays: ``(array (C, I, J, K) float32, affine 4x4 RAS)`` (the
    affine of the first file)."""
    loaded = load_channels(paths)
    return loaded.image.as_tensor().numpy(), np.asarray(loaded.image.affine, dtype=np.float64)


def check_channel_count(
    count: int, expected: int | None, expected_names: Sequence[str] = (), model: str = ""
) -> None:
    """Refuse ``count`` files for a model that takes ``expected`` channels, saying what it
    takes (before anything is read)."""
    if expected is not None and count != expected:
        names = f" ({', '.join(expected_names)})" if expected_names else ""
        raise InputError(
            f"model {model!r} expects {expected} input channel(s){names}, {count} file(s) given",
            hint=f"give {expected} files, one per channel, in this order",
        )


def write_channel_stack(
    paths: Sequence[str | Path],
    output: str | Path,
    *,
    expected: int | None = None,
    expected_names: Sequence[str] = (),
    model: str = "",
) -> Path:
    """Stack ``paths`` (:func:`stack_channels`) into the 4D NIfTI ``output`` (channels in the 4th
    axis, the order of ``paths``), written atomically.

    Args:
        expected: the channel count the target model takes; a different number of files is
            refused (before anything is read) with what the model expects.
        expected_names, model: the model's channel names and name, for that message.

    Raises:
        InputError: the count differs from ``expected``, the output is not ``.nii``/``.nii.gz``,
            or :func:`stack_channels` refuses the files.
    """
    import nibabel as nib

    from medxai.io.atomic import write_bytes_atomic

    out = Path(output)
    if not (out.name.endswith(".nii") or out.name.endswith(".nii.gz")):
        raise InputError(
            "is not a NIfTI file name", path=out, hint="end it with .nii.gz, e.g. case_4ch.nii.gz"
        )
    check_channel_count(len(paths), expected, expected_names, model)
    array, affine = stack_channels(paths)
    img = nib.Nifti1Image(np.moveaxis(array, 0, -1), affine)
    img.header.set_xyzt_units("mm")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    data = img.to_bytes() if out.name.endswith(".nii") else _gz(img)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(out, data)
    return out


def _gz(img: object) -> bytes:
    import gzip

    raw = img.to_bytes()  # type: ignore[attr-defined]
    return gzip.compress(raw, compresslevel=6, mtime=0)
