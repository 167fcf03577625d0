"""Pictures for people: the overlay (mask contours + saliency heat map) and a PNG preview panel.

Arrays are in MONAI order: ``(C, I, J[, K])`` with ``I`` along image columns and ``J`` along rows.
Pictures are stored rows x columns, so every panel is transposed to ``(J, I)`` before it is saved;
a picture read by :mod:`medxai.io.photo` and written here comes out the same way up.

Greyscale (and non-uint8) images are windowed to their 1st..99th percentiles for display; uint8
RGB pictures are shown as they are. The heat map uses a jet-like colour map computed with numpy.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from medxai.errors import InputError
from medxai.io.writers._atomic import write_bytes_atomic
from medxai.io.writers._common import PALETTE, as_label_array, as_numpy, label_colors_map
from medxai.labelmaps import present_values

__all__ = [
    "normalise_saliency",
    "overlay_rgb",
    "write_preview_png",
    "window_to_uint8",
    "jet",
    "label_contours",
    "shrink_picture",
]


def window_to_uint8(image: Any, low: float = 1.0, high: float = 99.0) -> np.ndarray:
    """Display version of ``image`` ``(C, ...)``: uint8, 1 or 3 channels.

    uint8 RGB stays as it is; anything else is scaled so that its ``low``..``high`` percentiles
    (over all channels and voxels) span 0..255. More than 3 channels: the first one is shown.
    """
    arr = as_numpy(image)
    if arr.ndim < 3:
        raise InputError(f"an image must be channel-first (C, I, J[, K]); found {arr.shape}")
    if arr.shape[0] not in (1, 3):
        arr = arr[:1]
    if arr.dtype == np.uint8:
        return arr
    data = arr.astype(np.float32)
    finite = data[np.isfinite(data)]
    if finite.size == 0:
        return np.zeros(arr.shape, dtype=np.uint8)
    lo, hi = np.percentile(finite, [low, high])
    if hi <= lo:
        lo, hi = float(finite.min()), float(finite.max())
    if hi <= lo:
        return np.zeros(arr.shape, dtype=np.uint8)
    scaled = (np.nan_to_num(data, nan=lo) - lo) / (hi - lo)
    return (np.clip(scaled, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def jet(values: Any) -> np.ndarray:
    """Jet-like colour map: values in 0..1 (any shape S) -> uint8 RGB ``(3, *S)``."""
    x = np.clip(np.asarray(values, dtype=np.float32), 0.0, 1.0)
    r = np.clip(1.5 - np.abs(4.0 * x - 3.0), 0.0, 1.0)
    g = np.clip(1.5 - np.abs(4.0 * x - 2.0), 0.0, 1.0)
    b = np.clip(1.5 - np.abs(4.0 * x - 1.0), 0.0, 1.0)
    return (np.stack([r, g, b]) * 255.0 + 0.5).astype(np.uint8)


def normalise_saliency(saliency: np.ndarray) -> np.ndarray:
    data = np.nan_to_num(saliency.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    lo = float(data.min()) if data.size else 0.0
    hi = float(np.percentile(data, 99.5)) if data.size else 0.0
    if hi <= lo:
        hi = float(data.max()) if data.size else 0.0
    if hi <= lo:
        return np.zeros_like(data)
    return np.clip((data - lo) / (hi - lo), 0.0, 1.0)


def label_contours(labels: np.ndarray, thickness: int = 1) -> np.ndarray:
    """In-plane contours of a label map ``(I, J[, K])``: the label value on boundary pixels, else 0.

    A pixel is on the boundary of its label when one of its 4 in-plane neighbours has another
    value (the image border counts as background). ``thickness`` > 1 widens the line inwards.
    """
    lab = labels
    contour = np.zeros_like(lab)
    current = lab.copy()
    for _ in range(max(1, int(thickness))):
        padded = np.pad(current, [(1, 1), (1, 1)] + [(0, 0)] * (lab.ndim - 2))
        core = padded[1:-1, 1:-1]
        edge = (
            (padded[:-2, 1:-1] != core)
            | (padded[2:, 1:-1] != core)
            | (padded[1:-1, :-2] != core)
            | (padded[1:-1, 2:] != core)
        ) & (core != 0)
        contour[edge] = core[edge]
        current = np.where(edge, 0, current)
    return contour


def overlay_rgb(
    image: Any,
    labels: Any,
    saliency: Any | None,
    label_colors: Any = None,
    *,
    contours: bool = True,
    heat_alpha: float = 0.6,
    contour_thickness: int | None = None,
    scaled: bool = False,
) -> np.ndarray:
    """The overlay picture: windowed image, saliency heat map blended in, label contours on top.

    Args:
        image: ``(C, I, J[, K])`` (C = 1 or 3; otherwise the first channel is shown).
        labels: ``(I, J[, K])`` label map (0 background).
        saliency: ``(I, J[, K])`` map or ``None``; scaled to 0..1 (min..99.5th percentile), blended
            with weight ``heat_alpha * value`` so that low saliency leaves the image visible.
        label_colors: ``{value: (r, g, b)}`` or a ``label_info`` list; missing labels get a
            default palette colour.
        contours: draw label contours (otherwise filled labels, half transparent).
        contour_thickness: in pixels; default grows with the picture (1 px per 256).
        scaled: ``saliency`` is already scaled to 0..1 (e.g. over a whole volume, of which this
            is one slice): it is used as it is.

    Returns:
        uint8 ``(3, I, J[, K])``.
    """
    base = window_to_uint8(image)
    spatial = base.shape[1:]
    if base.shape[0] == 1:
        base = np.repeat(base, 3, axis=0)
    lab = as_label_array(labels)
    if lab.shape != spatial:
        raise InputError(f"labels {lab.shape} and image {spatial} have different spatial shapes")
    out: np.ndarray = base.astype(np.float32)
    if saliency is not None:
        sal = as_numpy(saliency)
        if sal.ndim == lab.ndim + 1 and sal.shape[0] == 1:
            sal = sal[0]
        if sal.shape != spatial:
            raise InputError(
                f"saliency {sal.shape} and image {spatial} have different spatial shapes"
            )
        norm = np.clip(sal.astype(np.float32), 0, 1) if scaled else normalise_saliency(sal)
        alpha = (heat_alpha * norm)[None]
        out = out * (1.0 - alpha) + jet(norm).astype(np.float32) * alpha
    colors = label_colors_map(label_colors)
    values = present_values(lab, background=False)
    if values:
        if contours:
            thickness = contour_thickness or max(1, round(min(spatial[:2]) / 256))
            drawn = label_contours(lab, thickness)
            fill_alpha = 1.0
        else:
            drawn = lab
            fill_alpha = 0.5
        for value in values:
            color = np.asarray(
                colors.get(value, PALETTE[(value - 1) % len(PALETTE)]), dtype=np.float32
            )
            where = drawn == value
            out[:, where] = out[:, where] * (1.0 - fill_alpha) + color[:, None] * fill_alpha
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def _pick_slice(labels: np.ndarray, saliency: np.ndarray | None) -> int:
    area = labels.reshape(-1, labels.shape[-1]).astype(bool).sum(axis=0)
    if area.max() > 0:
        return int(area.argmax())
    if saliency is not None:
        return int(np.nan_to_num(saliency).reshape(-1, saliency.shape[-1]).sum(axis=0).argmax())
    return labels.shape[-1] // 2


def shrink_picture(
    img: np.ndarray, lab: np.ndarray, sal: np.ndarray | None, max_side: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Downscale a uint8 ``(C, I, J)`` picture (area), its ``(I, J)`` labels (nearest) and
    saliency (area) so that the longer side is ``max_side``; unchanged when already small."""
    cols, rows = img.shape[1], img.shape[2]
    if max(cols, rows) <= max_side:
        return img, lab, sal
    scale = max_side / max(cols, rows)
    size = (max(1, round(cols * scale)), max(1, round(rows * scale)))  # PIL: (width=I, height=J)
    hw = np.transpose(img, (2, 1, 0))  # (J, I, C) for PIL
    pic = Image.fromarray(hw if hw.shape[2] == 3 else hw[..., 0]).resize(size, Image.Resampling.BOX)
    arr = np.asarray(pic)
    arr = arr[..., None] if arr.ndim == 2 else arr
    small = np.ascontiguousarray(np.transpose(arr, (2, 1, 0)))
    ii = np.minimum(((np.arange(size[0]) + 0.5) * cols / size[0]).astype(np.intp), cols - 1)
    jj = np.minimum(((np.arange(size[1]) + 0.5) * rows / size[1]).astype(np.intp), rows - 1)
    small_lab = lab[np.ix_(ii, jj)]
    small_sal = None
    if sal is not None:
        f = Image.fromarray(np.ascontiguousarray(sal.T.astype(np.float32)), mode="F")
        small_sal = np.asarray(f.resize(size, Image.Resampling.BOX)).T
    return small, small_lab, small_sal


def write_preview_png(
    image: Any,
    labels: Any,
    saliency: Any | None,
    path: str | Path,
    label_colors: Any = None,
    *,
    gap: int = 4,
    slice_index: int | None = None,
    max_side: int | None = 1024,
) -> Path:
    """A side-by-side PNG: input | input + mask contours | input + saliency heat map.

    Args:
        image: ``(C, I, J)`` (or ``(C, I, J, K)``: one slice is shown, ``slice_index`` or the one
            with the largest mask area).
        labels: ``(I, J[, K])`` label map.
        saliency: ``(I, J[, K])`` or ``None`` (then only two panels).
        path: the PNG file.
        label_colors: ``{value: (r, g, b)}`` or a ``label_info`` list.
        gap: white pixels between panels.
        max_side: panels larger than this (longer side, pixels) are drawn downscaled to it, which
            keeps previews of 5-megapixel photos fast and small; ``None`` keeps full size.

    Returns:
        the path written. The picture is ``J`` rows by ``n * I + (n - 1) * gap`` columns (of the
        downscaled panel when ``max_side`` applies).
    """
    img = as_numpy(image)
    lab = as_label_array(labels)
    sal = None if saliency is None else as_numpy(saliency)
    if sal is not None and sal.ndim == lab.ndim + 1 and sal.shape[0] == 1:
        sal = sal[0]
    if img.ndim == 2:
        img = img[None]
    if img.ndim == 4:
        if lab.ndim != 3:
            raise InputError(f"a 3D image needs 3D labels; found labels of shape {lab.shape}")
        k = _pick_slice(lab, sal) if slice_index is None else int(slice_index)
        if not 0 <= k < img.shape[3]:
            raise InputError(f"slice_index {k} is outside 0..{img.shape[3] - 1}")
        # window on the whole volume so that the slice looks as it does in a viewer
        img = window_to_uint8(img)[..., k]
        lab = lab[..., k]
        sal = None if sal is None else sal[..., k]
    if img.ndim != 3 or lab.ndim != 2:
        raise InputError(
            f"the preview needs an image (C, I, J) and labels (I, J); found "
            f"{img.shape} and {lab.shape}"
        )
    plain = window_to_uint8(img)
    if max_side:
        plain, lab, sal = shrink_picture(plain, lab, sal, int(max_side))
    if plain.shape[0] == 1:
        plain = np.repeat(plain, 3, axis=0)
    panels = [plain, overlay_rgb(plain, lab, None, label_colors)]
    if sal is not None:
        panels.append(overlay_rgb(plain, np.zeros_like(lab), sal, label_colors))
    cols, rows = plain.shape[1], plain.shape[2]
    width = len(panels) * cols + (len(panels) - 1) * gap
    canvas = np.full((rows, width, 3), 255, dtype=np.uint8)
    for n, panel in enumerate(panels):
        x0 = n * (cols + gap)
        canvas[:, x0 : x0 + cols] = np.transpose(panel, (2, 1, 0))  # (3, I, J) -> (J, I, 3)
    buffer = io.BytesIO()
    # zlib level 1: on a 1536x512 preview 118 ms CPU against 156 ms at level 3 and 306 ms at the
    # default 6, for 2.5 % (15 %) more bytes (docs/benchmarks.md, batch throughput)
    Image.fromarray(canvas).save(buffer, format="PNG", compress_level=1)
    return write_bytes_atomic(path, buffer.getvalue())
