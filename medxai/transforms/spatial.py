"""Moved to :mod:`medxai.preprocessing.spatial`; these names stay importable from here."""

from medxai.preprocessing.spatial import resize_image, resize_label, resize_probabilities

__all__ = ["resize_image", "resize_probabilities", "resize_label"]
