"""The label palettes, in one place: display colours (RGB, 0-255) of labels that come without
one. :data:`LABEL_PALETTE` (:func:`label_color`) colours labels 1, 2, ... of medxai's own bundles
(the trainer records them) and of the writers (PNG preview, overlays, DICOM SEG);
:data:`DISTINCT_PALETTE` (:func:`distinct_colors`) colours the labels of foreign (MONAI) bundles,
which name their labels but give no colours (:func:`medxai.models.contract.labels_from_names`).
Torch-free, at the bottom of the layers with :mod:`medxai.errors`.
"""

from __future__ import annotations

__all__ = [
    "LABEL_PALETTE",
    "BACKGROUND_COLOR",
    "DISTINCT_PALETTE",
    "label_color",
    "distinct_colors",
]

#: Colours of labels 1, 2, ...; label ``v`` gets ``LABEL_PALETTE[(v - 1) % len(LABEL_PALETTE)]``.
LABEL_PALETTE: tuple[tuple[int, int, int], ...] = (
    (255, 64, 64),
    (64, 200, 64),
    (64, 128, 255),
    (255, 200, 0),
    (200, 0, 200),
    (0, 200, 200),
    (255, 128, 0),
)
#: The colour a bundle records for label 0.
BACKGROUND_COLOR = (0, 0, 0)


def label_color(value: int) -> tuple[int, int, int]:
    """The palette colour of label ``value`` (``BACKGROUND_COLOR`` for 0)."""
    if value == 0:
        return BACKGROUND_COLOR
    return LABEL_PALETTE[(value - 1) % len(LABEL_PALETTE)]


#: 20 colours told apart easily (Sasha Trubetskoy's list), in order: the foreground labels of a
#: foreign bundle get them one after the other.
DISTINCT_PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75),
    (60, 180, 75),
    (255, 225, 25),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (250, 190, 212),
    (0, 128, 128),
    (220, 190, 255),
    (170, 110, 40),
    (255, 250, 200),
    (128, 0, 0),
    (170, 255, 195),
    (128, 128, 0),
    (255, 215, 180),
    (0, 0, 128),
    (128, 128, 128),
)


def distinct_colors(n: int) -> list[tuple[int, int, int]]:
    """The first ``n`` colours of :data:`DISTINCT_PALETTE` (repeating after 20)."""
    return [DISTINCT_PALETTE[i % len(DISTINCT_PALETTE)] for i in range(n)]
