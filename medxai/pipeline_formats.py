"""Moved to :mod:`medxai.choices` (the one torch-free home of option names); these names stay
importable from here."""

from medxai.choices import EXPLAIN_CHOICES, FORMAT_CHOICES

__all__ = ["FORMAT_CHOICES", "EXPLAIN_CHOICES"]
