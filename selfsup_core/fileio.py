"""Atomic file writes: a crash or an error never leaves a half-written file behind.

Every file selfsup writes for the user (checkpoints, exported weights, migrated configs,
PNGs) goes through :func:`atomic_write`. No torch here, so light modules may use it.
"""
from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], object], *, durable: bool = True) -> Path:
    """Create or replace ``path`` with what ``write(handle)`` writes to a binary handle.

    The bytes go to a new temporary file in the same folder (created if missing), which is
    renamed over ``path`` only when ``write`` returned; on any exception the temporary file
    is removed and ``path`` is untouched. The file gets the permissions ``open()`` would give
    (0666 less the umask). ``durable``: fsync the file and the folder, so the new content
    survives a power cut (checkpoints, exported weights). Returns ``path`` as a ``Path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        if hasattr(os, "fchmod"):  # not on Windows
            os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if durable:
        _fsync_folder(path.parent)
    return path


def atomic_write_text(path: str | os.PathLike[str], text: str, *, durable: bool = False) -> Path:
    """:func:`atomic_write` of UTF-8 ``text``."""
    return atomic_write(path, lambda handle: handle.write(text.encode("utf-8")), durable=durable)


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (where the platform allows it)."""
    try:
        dir_fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


__all__ = ["atomic_write", "atomic_write_text"]
