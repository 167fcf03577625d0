"""Moved to :mod:`medxai.preprocessing.intensity`; these names stay importable from here."""

from medxai.preprocessing.intensity import (
    RandColorJitter,
    RandColorJitterd,
    ScaleIntensityFromBundle,
    ScaleIntensityFromBundled,
)

__all__ = [
    "ScaleIntensityFromBundle",
    "ScaleIntensityFromBundled",
    "RandColorJitter",
    "RandColorJitterd",
]
