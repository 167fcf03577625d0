"""The one label palette: display colours (RGB, 0-255) of labels 1, 2, ... that come without
one, used by the trainer for new bundles' labels and by the writers (PNG preview, overlays, DICOM
SEG). Torch-free, at the bottom of the layers with :mod:`medxai.errors`.
"""

from __future__ import annotations

__all__ = ["LABEL_PALETTE", "BACKGROUND_COLOR", "label_color"]

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
