"""Atomic file writes: write to a temporary file in the destination folder, then ``os.replace``.

A reader (a viewer, a PACS import, a resumed batch) therefore sees either the old file or the
complete new one, never a half-written file. The temporary file is created with mode ``0o666``
minus the process umask (as ``open`` would), so outputs get the usual permissions, and it keeps the
destination's extension (``.nii.gz``, ``.png``, ...) so that libraries which choose the format from
the name do the right thing.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from medxai.errors import ProcessingError

__all__ = ["atomic_path", "write_bytes_atomic", "write_text_atomic", "full_suffix"]

_DOUBLE_SUFFIXES = (".nii.gz", ".tar.gz", ".json.gz")


def full_suffix(path: str | Path) -> str:
    """The extension of ``path``, with the double ones (``.nii.gz``) kept whole."""
    name = Path(path).name.lower()
    for suffix in _DOUBLE_SUFFIXES:
        if name.endswith(suffix):
            return Path(path).name[-len(suffix):]
    return Path(path).suffix


def _write_error(path: Path, exc: OSError) -> ProcessingError:
    return ProcessingError(
        f"cannot write the output ({exc.strerror or exc})", path=path,
        hint="check that the output folder is writable and that the disk is not full",
    )


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path`` atomically.

    The caller writes the whole file to the yielded path (by name, with any library). When the
    ``with`` block raises, the temporary file is removed and ``path`` is left as it was.

    Raises:
        ProcessingError: the folder cannot be created or written.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _write_error(path, exc) from exc
    suffix = full_suffix(path)
    tmp = None
    for _ in range(100):
        candidate = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp{suffix}")
        try:
            fd = os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        except OSError as exc:
            raise _write_error(path, exc) from exc
        os.close(fd)
        tmp = candidate
        break
    if tmp is None:  # pragma: no cover - 100 collisions of 48 random bits
        raise ProcessingError("cannot create a temporary file", path=path)
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as exc:
        _remove_quietly(tmp)
        raise _write_error(path, exc) from exc
    except BaseException:
        _remove_quietly(tmp)
        raise


def _remove_quietly(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns ``path``."""
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    return path


def write_text_atomic(path: str | Path, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically; returns ``path``."""
    return write_bytes_atomic(path, text.encode(encoding))
