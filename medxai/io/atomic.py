"""Atomic file writes, the one helper every writer uses: write to a temporary file in the
destination folder, then ``os.replace``.

A reader (a viewer, a PACS import, a resumed batch) therefore sees either the old file or the
complete new one, never a half-written file. The temporary file is created with mode ``0o666``
minus the process umask (as ``open`` would), so outputs get the usual permissions, and it keeps the
destination's extension (``.nii.gz``, ``.png``, ...) so that libraries which choose the format from
the name do the right thing.

With ``durable=True`` (model weights, training checkpoints, received instances) the new file's
data is fsync'd before the rename and the folder after it, so that the file survives a power
cut once the call returns.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from medxai.errors import ProcessingError

__all__ = [
    "atomic_path",
    "write_bytes_atomic",
    "write_text_atomic",
    "full_suffix",
    "fsync_path",
    "fsync_dir",
]

_DOUBLE_SUFFIXES = (".nii.gz", ".tar.gz", ".json.gz")


def full_suffix(path: str | Path) -> str:
    """The extension of ``path``, with the double ones (``.nii.gz``) kept whole."""
    name = Path(path).name.lower()
    for suffix in _DOUBLE_SUFFIXES:
        if name.endswith(suffix):
            return Path(path).name[-len(suffix) :]
    return Path(path).suffix


def _write_error(path: Path, exc: OSError) -> ProcessingError:
    return ProcessingError(
        f"cannot write the output ({exc.strerror or exc})",
        path=path,
        hint="check that the output folder is writable and that the disk is not full",
    )


def fsync_path(path: str | Path) -> None:
    """Flush the data of the file ``path`` to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | Path) -> None:
    """Flush the folder ``path`` (its entries: a rename into it) to disk, where the platform can
    (not on Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - folders cannot be opened on Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some file systems refuse fsync on folders
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_path(
    path: str | Path,
    *,
    durable: bool = False,
    tmp_dir: str | Path | None = None,
    mode: int = 0o666,
) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path`` atomically.

    The caller writes the whole file to the yielded path (by name, with any library). When the
    ``with`` block raises, the temporary file is removed and ``path`` is left as it was. With
    ``durable`` the file's data is fsync'd before the rename and the folder after it.

    Args:
        tmp_dir: where the temporary file is made instead of ``path``'s folder (it must be on the
            same file system): a folder a reader of ``path``'s folder never looks at, which a
            restart can empty of what a killed process left. The name is not hidden there.
        mode: the temporary (and so the final) file's permissions, minus the umask.

    Raises:
        ProcessingError: the folder cannot be created or written.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _write_error(path, exc) from exc
    suffix = full_suffix(path)
    # next to the destination the name is hidden, so that readers of that folder skip it; in a
    # folder of its own it is not (a check of the temporary file reads it like any file)
    where, dot = (Path(tmp_dir), "") if tmp_dir is not None else (path.parent, ".")
    tmp = None
    for _ in range(100):
        candidate = where / f"{dot}{path.name}.{secrets.token_hex(6)}.tmp{suffix}"
        try:
            fd = os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
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
        if durable:
            fsync_path(tmp)
        os.replace(tmp, path)
        if durable:
            fsync_dir(path.parent)
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


def write_bytes_atomic(path: str | Path, data: bytes, *, durable: bool = False) -> Path:
    """Write ``data`` to ``path`` atomically (the data fsync'd before the rename; with
    ``durable`` the folder too, after it); returns ``path``."""
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    if durable:
        fsync_dir(path.parent)
    return path


def write_text_atomic(
    path: str | Path, text: str, encoding: str = "utf-8", *, durable: bool = False
) -> Path:
    """Write ``text`` to ``path`` atomically; returns ``path``."""
    return write_bytes_atomic(path, text.encode(encoding), durable=durable)
