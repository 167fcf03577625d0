"""Moved to :mod:`medxai.io.datasets` (shared by training and evaluation); these names stay
importable from here."""

from medxai.io.datasets import (
    PICTURE_SUFFIXES,
    VOLUME_SUFFIXES,
    Pair,
    dataset_json_validation,
    find_pairs,
    is_2d_dataset,
)

__all__ = [
    "Pair",
    "find_pairs",
    "dataset_json_validation",
    "is_2d_dataset",
    "PICTURE_SUFFIXES",
    "VOLUME_SUFFIXES",
]
