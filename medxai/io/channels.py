"""Several co-registered single-channel files as one multi-channel image (BraTS: T1c, T1, T2,
FLAIR), and that image as the 4D NIfTI that multi-channel bundles take.

MONAI bundles with several input channels list one file per channel in their datalist
(``LoadImaged`` stacks them channel-first); medxai takes one input per case, so the files are
stacked first: :func:`stack_channels` (Python) or ``medxai channels A B C D -o case.nii.gz``.
The files must be on one grid (same voxel shape and affine), as BraTS ships them; nothing is
resampled.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from medxai.errors import InputError
from medxai.io.readers import load_image

__all__ = ["stack_channels", "write_channel_stack", "AFFINE_TOLERANCE_MM"]

#: How far two files' affines may differ (mm, per matrix entry) and still be one grid.
AFFINE_TOLERANCE_MM = 1e-3


def stack_channels(paths: Sequence[str | Path]) -> tuple[np.ndarray, np.ndarray]:
    """Read each file (any form medxai reads: NIfTI, NRRD, MHA, a DICOM series folder, ...) and
    stack them channel-first in the given order.

    Returns:
        ``(array (C, I, J, K) float32, affine 4x4 RAS)`` (the affine of the first file).

    Raises:
        InputError: fewer than two files, a file with more than one channel, or files on
            different grids (the message names the file and both grids).
    """
    paths = [Path(p) for p in paths]
    if len(paths) < 2:
        raise InputError(
            f"{len(paths)} file given; stacking channels needs two or more",
            hint="give one file per channel, in the bundle's channel order",
        )
    arrays, first_affine, first_shape = [], None, None
    for path in paths:
        img = load_image(path).image
        if int(img.shape[0]) != 1:
            raise InputError(
                f"has {int(img.shape[0])} channels; each file must hold one channel (sequence)",
                path=path,
                hint="give one file per sequence, or pass a multi-channel file to segment as is",
            )
        affine = np.asarray(img.affine, dtype=np.float64)
        shape = tuple(int(s) for s in img.shape[1:])
        if first_affine is None:
            first_affine, first_shape = affine, shape
        elif shape != first_shape or not np.allclose(
            affine, first_affine, atol=AFFINE_TOLERANCE_MM
        ):
            raise InputError(
                f"is not on the grid of {Path(paths[0]).name}: {shape} voxels with affine "
                f"{np.round(affine, 3).tolist()}, there {first_shape} with "
                f"{np.round(first_affine, 3).tolist()}",
                path=path,
                hint="the channels must be co-registered on one grid (as BraTS ships them); "
                "resample them onto one grid first",
            )
        arrays.append(np.asarray(img.as_tensor()[0].numpy(), dtype=np.float32))
    assert first_affine is not None
    return np.stack(arrays), first_affine


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
    if expected is not None and len(paths) != expected:
        names = f" ({', '.join(expected_names)})" if expected_names else ""
        raise InputError(
            f"model {model!r} expects {expected} input channel(s){names}, "
            f"{len(paths)} file(s) given",
            hint=f"give {expected} files, one per channel, in this order",
        )
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
