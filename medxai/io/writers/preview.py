"""The preview a clinician can read (``preview.png``): titled panels, the heat map blended over the
image with a colour bar that says what it shows, the size of each segment, the model and a
"not for diagnostic use" line. Drawn with numpy and Pillow only (no matplotlib: its import alone
costs more than a whole preview).

Layout (``render_preview`` returns it with the picture, in pixels, boxes ``(x0, y0, x1, y1)``
with the stops exclusive):

- a header line: ``medxai preview - <model> <version>``;
- one row per foreground label of the model (multi-label models get one row each, a label that
  was not found included, so that "nothing found" is visible), titled with the label's name and
  its size: area in mm² (pixels when the input has no spacing) for pictures, volume in mm³ and ml
  (voxels without spacing) for volumes;
- in each row, panels separated by white columns: for a picture ``input | <label> contour |
  saliency``; for a volume, for each of up to three axial slices through the segment (at a
  quarter, half and three quarters of its extent along ``K``; the middle slices when nothing was
  found) ``slice k/K`` (contours and heat map), the input slice first;
- a colour bar at the right of each row with a heat map (``0`` low .. ``1`` high, the map's
  minimum .. 99.5th percentile as in :func:`~medxai.io.writers.png.overlay_rgb`) and its meaning
  (the saliency method and target of that label);
- a footer: ``AI result, not for diagnostic use``.

Panels are drawn at least ``min_side`` pixels on their shorter side (small crops such as
hippocampus MRI are enlarged, nearest neighbour) and at most ``max_side`` (640) on their longer side; sizes are counted on the full grid.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from medxai.errors import InputError
from medxai.io.writers._atomic import write_bytes_atomic
from medxai.io.writers._common import (
    NOT_FOR_DIAGNOSIS,
    PALETTE,
    SOFTWARE_NAME,
    LabelSpec,
    as_label_array,
    as_numpy,
    normalise_labels,
)
from medxai.io.writers.png import (
    jet,
    normalise_saliency,
    overlay_rgb,
    shrink_picture,
    window_to_uint8,
)
from medxai.labelmaps import present_values, value_counts

__all__ = ["PreviewInfo", "render_preview", "write_clinical_preview", "segment_size_text"]

_GAP = 6  # white columns between panels
_TITLE = 18  # height of a panel title
_LINE = 20  # height of a header, row or footer line
_BAR = 16  # width of the colour bar
_BAR_TEXT = 165  # room for the colour bar's legend
_WHITE, _BLACK, _GREY = (255, 255, 255), (0, 0, 0), (90, 90, 90)
_HEAT_ALPHA = 0.5  # at most half heat map: the image stays visible under the hottest spot


@dataclass(frozen=True)
class PreviewInfo:
    """What the preview says besides the pictures."""

    model_name: str = ""
    model_version: str = ""
    #: the saliency method (``gradcam``, ...) and what it explains (``segment``, ``border``...).
    method: str | None = None
    target: str | None = None
    #: millimetres per voxel along ``I, J[, K]``; None when the input has no spacing (pixels).
    spacing: Sequence[float] | None = None
    slices: int = 3
    min_side: int = 160
    max_side: int = 640


@functools.lru_cache(maxsize=4)
def _font(size: int) -> tuple[Any, bool]:
    """A font and whether it has the superscripts of mm² and mm³: DejaVu Sans where the system
    has it (found by name; never downloaded), else Pillow's built-in font (then ``mm2``)."""
    try:
        return ImageFont.truetype("DejaVuSans.ttf", size), True
    except OSError:
        pass
    try:
        return ImageFont.load_default(size=size), False
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default(), False


def _fit(text: str, width: int, size: int) -> str:
    """``text`` cut (with "...") to ``width`` pixels in the font of ``size``."""
    font, _ = _font(size)
    if not hasattr(font, "getlength") or font.getlength(text) <= width:
        return text
    while len(text) > 1 and font.getlength(text + "...") > width:
        text = text[:-1]
    return text + "..."


def segment_size_text(count: int, spacing: Sequence[float] | None, ndim: int) -> str:
    """``"area 12.5 mm²"``, ``"volume 830 mm³ (0.83 ml)"``, or pixels/voxels without spacing."""
    if spacing is not None and len(spacing) >= ndim and all(float(s) > 0 for s in spacing[:ndim]):
        unit = float(np.prod([float(s) for s in spacing[:ndim]]))
        if ndim == 2:
            return f"area {count * unit:.1f} mm²"
        mm3 = count * unit
        return f"volume {mm3:.0f} mm³ ({mm3 / 1000:.2f} ml)"
    return f"area {count} px" if ndim == 2 else f"volume {count} voxels"


def _representative_slices(mask: np.ndarray, n: int) -> list[int]:
    """Up to ``n`` slices (last axis) through the segment: at 1/4, 1/2, 3/4 of its extent."""
    depth = mask.shape[-1]
    present = np.flatnonzero(mask.reshape(-1, depth).any(axis=0))
    lo, hi = (int(present[0]), int(present[-1])) if present.size else (0, depth - 1)
    picks = [round(lo + (hi - lo) * (i + 1) / (n + 1)) for i in range(n)]
    return sorted(set(int(np.clip(k, 0, depth - 1)) for k in picks))


def _scale_for(cols: int, rows: int, info: PreviewInfo) -> float:
    scale = max(1.0, info.min_side / max(1, min(cols, rows)))
    return min(scale, info.max_side / max(cols, rows))


def _resized(panel: np.ndarray, size: tuple[int, int], nearest: bool) -> np.ndarray:
    """(3, I, J) uint8 -> (rows, cols, 3) at ``size`` = (width, height)."""
    pic = Image.fromarray(np.ascontiguousarray(np.transpose(panel, (2, 1, 0))))
    if pic.size != size:
        pic = pic.resize(size, Image.Resampling.NEAREST if nearest else Image.Resampling.BOX)
    return np.asarray(pic)


def _colorbar(height: int) -> np.ndarray:
    values = np.linspace(1.0, 0.0, height, dtype=np.float32)[:, None].repeat(_BAR, axis=1)
    return np.transpose(jet(values), (1, 2, 0))


@dataclass
class _Row:
    title: str
    panels: list[tuple[str, np.ndarray]]  # (title, (3, I, J) uint8)
    legend: str | None  # the colour bar's meaning; None: no saliency, no bar


def _method_text(info: PreviewInfo, label: str) -> str:
    method = {"gradcam": "Grad-CAM", "gradcampp": "Grad-CAM++", "hirescam": "HiResCAM"}.get(
        info.method or "", info.method or "saliency"
    )
    target = f"\ntarget: {info.target}" if info.target else ""
    return f"saliency: {method}\nof {label}{target}"


def _rows(
    image: np.ndarray,
    labels: np.ndarray,
    saliency: Mapping[int, np.ndarray],
    label_info: Any,
    info: PreviewInfo,
    counts: Mapping[int, int],
) -> list[_Row]:
    plain = window_to_uint8(image)  # windowed once: every panel of a volume looks the same
    if plain.shape[0] == 1:
        plain = np.repeat(plain, 3, axis=0)
    specs = normalise_labels(label_info) or [LabelSpec(1, "segment", PALETTE[0])]
    rows = []
    for spec in specs:
        mask = labels == spec.value
        size = segment_size_text(counts.get(spec.value, 0), info.spacing, labels.ndim)
        sal = saliency.get(spec.value)
        colors = {spec.value: spec.color}
        only = np.where(mask, spec.value, 0).astype(np.uint8)
        legend = None if sal is None else _method_text(info, spec.name)
        title = f"{spec.name}: {size}"
        if labels.ndim == 2:
            panels = [
                ("input", plain),
                (f"{spec.name} contour", overlay_rgb(plain, only, None, colors)),
            ]
            if sal is not None:
                heat = overlay_rgb(plain, np.zeros_like(only), sal, colors, heat_alpha=_HEAT_ALPHA)
                panels.append(("saliency", heat))
        else:
            picks = _representative_slices(mask, info.slices)
            if sal is not None:  # one scale for the whole volume: slices compare
                sal = normalise_saliency(sal)
            panels = [
                (f"input, slice {picks[len(picks) // 2] + 1}", plain[..., picks[len(picks) // 2]])
            ]
            for k in picks:
                slice_sal = None if sal is None else sal[..., k]
                panel = overlay_rgb(
                    plain[..., k], only[..., k], slice_sal, colors, heat_alpha=_HEAT_ALPHA
                )
                panels.append((f"slice {k + 1}/{labels.shape[-1]}", panel))
        rows.append(_Row(title, panels, legend))
    return rows


def _draw(rows: list[_Row], info: PreviewInfo) -> tuple[np.ndarray, dict[str, Any]]:
    cols, rows_px = rows[0].panels[0][1].shape[1:3]
    scale = _scale_for(cols, rows_px, info)
    width_p, height_p = max(1, round(cols * scale)), max(1, round(rows_px * scale))
    n_panels = max(len(r.panels) for r in rows)
    has_bar = any(r.legend for r in rows)
    width = n_panels * width_p + (n_panels - 1) * _GAP + (_GAP + _BAR + _BAR_TEXT if has_bar else 0)
    row_h = _LINE + _TITLE + height_p + _GAP
    height = _LINE + len(rows) * row_h + _LINE
    canvas = np.full((height, width, 3), 255, dtype=np.uint8)
    layout: dict[str, Any] = {"width": width, "height": height, "panel_size": [width_p, height_p]}
    layout["header"] = [0, 0, width, _LINE]
    texts: list[tuple[tuple[int, int], str, tuple[int, int, int], int]] = []
    header = f"{SOFTWARE_NAME} preview - {info.model_name} {info.model_version}".strip()
    texts.append(((4, 3), header, _BLACK, 13))
    layout["rows"] = []
    for r, row in enumerate(rows):
        y0 = _LINE + r * row_h
        texts.append(((4, y0 + 3), row.title, _BLACK, 13))
        py = y0 + _LINE + _TITLE
        entry: dict[str, Any] = {"title": row.title, "panels": []}
        for n, (title, panel) in enumerate(row.panels):
            x0 = n * (width_p + _GAP)
            canvas[py : py + height_p, x0 : x0 + width_p] = _resized(
                panel, (width_p, height_p), scale > 1
            )
            texts.append(((x0 + 2, y0 + _LINE + 2), _fit(title, width_p - 4, 11), _GREY, 11))
            entry["panels"].append({"title": title, "box": [x0, py, x0 + width_p, py + height_p]})
        if row.legend:
            bx = n_panels * (width_p + _GAP)
            canvas[py : py + height_p, bx : bx + _BAR] = _colorbar(height_p)
            tx = bx + _BAR + 4
            texts += [
                ((tx, py), "1 high", _BLACK, 11),
                ((tx, py + height_p - 13), "0 low", _BLACK, 11),
            ]
            for i, line in enumerate(row.legend.split("\n")):
                texts.append(((tx, py + height_p // 2 - 20 + 14 * i), line[:28], _BLACK, 11))
            entry["colorbar"] = [bx, py, bx + _BAR, py + height_p]
            entry["legend"] = row.legend
        layout["rows"].append(entry)
    layout["footer"] = [0, height - _LINE, width, height]
    texts.append(((4, height - _LINE + 3), NOT_FOR_DIAGNOSIS, (170, 0, 0), 13))
    pic = Image.fromarray(canvas)
    draw = ImageDraw.Draw(pic)
    for xy, text, color, size in texts:
        font, superscripts = _font(size)
        if not superscripts:
            text = text.replace("²", "2").replace("³", "3")
        draw.text(xy, text, fill=color, font=font)
    layout["texts"] = [t[1] for t in texts]
    return np.asarray(pic), layout


def _saliency_maps(saliency: Any, labels: np.ndarray) -> dict[int, np.ndarray]:
    """``{label value: map}`` from a mapping or a single map (then it explains every label)."""
    if saliency is None:
        return {}
    items = saliency.items() if isinstance(saliency, Mapping) else [(None, saliency)]
    maps = {}
    for value, sal in items:
        arr = as_numpy(sal)
        if arr.ndim == labels.ndim + 1 and arr.shape[0] == 1:
            arr = arr[0]
        if arr.shape != labels.shape:
            raise InputError(f"saliency {arr.shape} and labels {labels.shape} differ in shape")
        if value is None:
            return {v: arr for v in range(1, 256)}
        maps[int(value)] = arr
    return maps


def _shrunk(
    img: np.ndarray, lab: np.ndarray, maps: dict[int, np.ndarray], max_side: int
) -> tuple[np.ndarray, np.ndarray, dict[int, np.ndarray]]:
    small_maps: dict[int, np.ndarray] = {}
    small_img, small_lab = img, lab
    for value, sal in maps.items():
        if value in small_maps:
            continue
        same = [v for v, other in maps.items() if other is sal]
        small_img, small_lab, small = shrink_picture(img, lab, sal, max_side)
        assert small is not None  # a map in, a map out
        small_maps.update({v: small for v in same})
    if not maps:
        small_img, small_lab, _ = shrink_picture(img, lab, None, max_side)
    return small_img, small_lab, small_maps


def render_preview(
    image: Any,
    labels: Any,
    saliency: Any | None,
    label_info: Any = None,
    info: PreviewInfo | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """The preview picture ``(height, width, 3)`` uint8 and its layout (see the module doc).

    Args:
        image: ``(C, I, J[, K])`` (C = 1 or 3).
        labels: ``(I, J[, K])`` label map.
        saliency: ``{label value: (I, J[, K]) map}``, one map for every label, or None.
        label_info: ``[{"value", "name", "color"}, ...]`` (the model's labels).
        info: model, method, spacing, ...
    """
    info = info or PreviewInfo()
    img = as_numpy(image)
    lab = as_label_array(labels)
    if img.ndim == lab.ndim:
        img = img[None]
    if img.shape[1:] != lab.shape:
        raise InputError(f"image {img.shape} and labels {lab.shape} differ in spatial shape")
    if label_info is None:
        label_info = [
            {"value": int(v), "color": PALETTE[(int(v) - 1) % len(PALETTE)]}
            for v in present_values(lab, background=False)
        ]
    maps = _saliency_maps(saliency, lab)
    counts = value_counts(lab)  # on the full grid
    if lab.ndim == 2 and max(lab.shape) > info.max_side:
        # a large photo: shrink the picture, labels and maps once, before any overlay
        img, lab, maps = _shrunk(window_to_uint8(img), lab, maps, info.max_side)
    rows = _rows(img, lab, maps, label_info, info, counts)
    return _draw(rows, info)


def write_clinical_preview(
    image: Any,
    labels: Any,
    saliency: Any | None,
    path: str | Path,
    label_info: Any = None,
    info: PreviewInfo | None = None,
) -> tuple[Path, dict[str, Any]]:
    """:func:`render_preview` saved as PNG; returns the path and the layout."""
    picture, layout = render_preview(image, labels, saliency, label_info, info)
    buffer = io.BytesIO()
    # zlib level 1, as write_preview_png (docs/benchmarks.md: fastest for a few % more bytes)
    Image.fromarray(picture).save(buffer, format="PNG", compress_level=1)
    return write_bytes_atomic(path, buffer.getvalue()), layout
