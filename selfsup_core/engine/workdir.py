"""A run's work dir: one run at a time, writable, no stale temporaries, nothing left by a failed start.

The trainer's main process calls, in order, when a run starts: :meth:`WorkDir.open` (creates
the folder if needed and takes an exclusive ``fcntl.flock`` on ``.selfsup-run.lock`` for the
run's lifetime; a second run into the same folder gets one line naming the holder's PID),
:meth:`WorkDir.check_writable` and :meth:`WorkDir.remove_stale_temporaries`. When the run
ends, :meth:`WorkDir.close` removes the lock file and releases the lock; after a failure before the first training
iteration, :meth:`WorkDir.clean_up` first removes what this run created.
"""
from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path

from ..errors import SelfSupError

LOCK_FILE = ".selfsup-run.lock"
#: Files a run creates in its work dir before its first iteration (removed if it fails then).
START_FILES = ("metrics.jsonl", "config.toml", "run.log")

try:  # POSIX; elsewhere runs are not locked
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]


class WorkDirError(SelfSupError):
    """The work dir is in use by another run, or cannot be written."""


class WorkDir:
    """The work dir of one run, as its main process sees it."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.created = False
        self._preexisting: set[str] = set()
        self._lock_fd: int | None = None
        self._owned = False  # this process locked it: only then may clean_up remove anything

    def open(self) -> None:
        """Create the folder (remembering whether it existed) and lock it for this process.

        Raises WorkDirError, one line: the folder cannot be created, or another run holds it
        (naming that run's PID)."""
        path = self.path
        if path.exists() and not path.is_dir():
            raise WorkDirError(f"work dir {path} is a file, not a folder; pass --work-dir DIR")
        self.created = not path.exists()
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise WorkDirError(f"work dir {path} cannot be created ({_os_error(exc)}); "
                               "pass --work-dir DIR on a writable disk") from exc
        self._preexisting = {p.name for p in path.iterdir()}
        self._lock()

    def _lock(self) -> None:
        if fcntl is None:
            self._owned = True
            return
        lock = self.path / LOCK_FILE
        while True:
            try:
                fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise self._not_writable(exc) from exc
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
                os.close(fd)
                if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    raise WorkDirError(f"work dir {self.path} cannot be locked ({_os_error(exc)})") from exc
                raise WorkDirError(
                    f"work dir {self.path} is in use by another run (PID {holder}, lock {lock}); wait for it to "
                    "end, or pass --work-dir NEW_DIR; nothing was changed") from None
            if _same_file(fd, lock):
                break
            os.close(fd)  # the holder removed the file as it ended: lock the new one
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        except OSError as exc:
            os.close(fd)
            raise self._not_writable(exc) from exc
        self._lock_fd = fd
        self._owned = True

    def check_writable(self) -> None:
        """Write, fsync and remove a small probe file: a read-only, immutable or full work dir
        fails now, in one line, instead of at the first checkpoint."""
        probe = self.path / f".write-probe-{os.getpid()}.tmp"
        try:
            with open(probe, "wb") as handle:
                handle.write(b"selfsup" * 512)
                handle.flush()
                os.fsync(handle.fileno())
        except OSError as exc:
            raise self._not_writable(exc) from exc
        finally:
            with contextlib.suppress(OSError):
                probe.unlink()

    def remove_stale_temporaries(self) -> list[Path]:
        """Remove ``.*.tmp`` (half-written checkpoints of a killed run) and ``.*.link`` files;
        returns what was removed. Safe: this process holds the lock."""
        removed = []
        for path in self.path.glob(".*"):
            if path.is_file() and path.suffix in (".tmp", ".link") and path.name != LOCK_FILE:
                with contextlib.suppress(OSError):
                    path.unlink()
                    removed.append(path)
        return removed

    def clean_up(self) -> None:
        """After a failure before the first iteration: remove the start files this run
        created, and the folder itself if this run created it and it is now empty. Nothing
        when this process never held the lock (another run's files are not touched)."""
        if not self._owned:
            return
        for name in START_FILES:
            if name not in self._preexisting:
                with contextlib.suppress(OSError):
                    (self.path / name).unlink()
        if self.created:
            self.close()
            with contextlib.suppress(OSError):
                self.path.rmdir()

    def close(self) -> None:
        """Remove the lock file, then release the lock (a run waiting on the removed file
        notices and locks a new one)."""
        if self._lock_fd is not None:
            fd, self._lock_fd = self._lock_fd, None
            with contextlib.suppress(OSError):
                (self.path / LOCK_FILE).unlink()
            with contextlib.suppress(OSError):
                os.close(fd)

    def _not_writable(self, exc: OSError) -> WorkDirError:
        return WorkDirError(f"work dir {self.path} is not writable ({_os_error(exc)}); fix its permissions or "
                            "free space, or pass --work-dir DIR on a writable disk")


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except OSError:
        return False


def _os_error(exc: OSError) -> str:
    return f"{type(exc).__name__}: {exc.strerror or exc}"


__all__ = ["LOCK_FILE", "START_FILES", "WorkDir", "WorkDirError"]
