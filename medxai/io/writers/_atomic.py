"""Moved to :mod:`medxai.io.atomic` (the one atomic-write helper of the package); these names
stay importable from here for the writers."""

from medxai.io.atomic import (
    atomic_path,
    fsync_dir,
    fsync_path,
    full_suffix,
    write_bytes_atomic,
    write_text_atomic,
)

__all__ = [
    "atomic_path",
    "write_bytes_atomic",
    "write_text_atomic",
    "full_suffix",
    "fsync_path",
    "fsync_dir",
]
