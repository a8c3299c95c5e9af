"""The data-source interface (MMSelfSup 0.x style) and what every source shares.

A data source reads samples; it does no augmentation. Its API:

- ``len(source)``: number of samples;
- ``source.get_img(i) -> PIL.Image.Image``: sample ``i`` in mode ``"RGB"`` or ``"L"``
  (see ``color_type``);
- ``source.get_gt_labels() -> np.ndarray``: int64 labels of shape ``(len(source),)``,
  ``-1`` where a sample has no label;
- ``source.CLASSES`` (alias ``class_names``): class names indexed by label, or ``None``.

Sources are picklable (DataLoader workers receive a copy): file-backed sources keep paths,
array-backed sources keep uint8 numpy arrays in memory.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image
from selfsup_core.api import SelfSupError, unwrap_worker_message

COLOR_TYPES = ("color", "grayscale", "unchanged")
_GREY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F", "La"}


class BadSampleError(SelfSupError, RuntimeError):
    """An image file that cannot be opened or decoded; ``path`` names it.

    A :class:`~selfsup_core.errors.SelfSupError`: ``selfsup-run`` prints its one line and exits
    with status 2. Raised in a DataLoader worker, torch rebuilds it in the main process from
    the worker's traceback text (``BadSampleError(text)``, no ``reason``); the original
    message, path and reason are recovered from that text."""

    def __init__(self, path: str, reason: str | None = None) -> None:
        if reason is None:  # rebuilt by torch from a worker's "Caught BadSampleError ..." text
            message = unwrap_worker_message(path) or path
            found, _, reason = message.removeprefix(_PREFIX).partition(": ")
            path = found if message.startswith(_PREFIX) else ""
        self.path = path
        self.reason = reason
        super().__init__(f"{_PREFIX}{path}: {reason}" if path else reason)

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.path, self.reason)


_PREFIX = "cannot read image "


def check_color_type(owner: str, color_type: str) -> str:
    """Validate a ``color_type`` argument; returns it."""
    if color_type not in COLOR_TYPES:
        raise ValueError(
            f"{owner}: color_type must be one of {', '.join(repr(c) for c in COLOR_TYPES)}, got {color_type!r}"
        )
    return color_type


def convert_color(img: Image.Image, color_type: str) -> Image.Image:
    """``img`` in mode ``"RGB"`` (``"color"``), ``"L"`` (``"grayscale"``), or the closest of the
    two to how it is stored (``"unchanged"``: grey modes -> ``"L"``, everything else -> ``"RGB"``)."""
    if color_type == "unchanged":
        color_type = "grayscale" if img.mode in _GREY_MODES else "color"
    target = "RGB" if color_type == "color" else "L"
    if img.mode == target:
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I") and target == "L":
        # 16/32-bit grey: PIL's convert("L") clips instead of scaling; scale to 8 bits.
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") else max(float(arr.max()), 1.0)
        return Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        # Composite transparent pixels on black (the usual decoder behaviour) before dropping alpha.
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (0, 0, 0, 255))
        img = Image.alpha_composite(background, img)
    return img.convert(target)


def load_image(path: str, color_type: str = "color") -> Image.Image:
    """Open and fully decode an image file.

    Returns a PIL image in mode ``"RGB"`` or ``"L"`` (see :func:`convert_color`).
    Raises :class:`BadSampleError` naming ``path`` when the file is missing, unreadable,
    truncated or not an image.
    """
    try:
        with Image.open(path) as img:
            img.load()
            return convert_color(img, color_type)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:  # PIL's decode errors
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise BadSampleError(path, reason) from exc


def missing_path(owner: str, argument: str, path: str, fix: str) -> FileNotFoundError:
    """A one-line ``FileNotFoundError`` naming the argument, the path and the fix."""
    return FileNotFoundError(f"{owner}: {argument} {path!r} does not exist; {fix}")


def check_folder(owner: str, argument: str, path: str, fix: str) -> None:
    """Refuse ``path`` given as ``argument`` unless it is a folder: one line saying whether it
    does not exist, is a dangling symlink or is a file, and the fix. Never looks elsewhere."""
    if os.path.isdir(path):
        return
    if os.path.islink(path) and not os.path.exists(path):
        raise FileNotFoundError(f"{owner}: {argument} {path!r} is a symlink to {os.readlink(path)!r}, which does "
                                f"not exist; {fix}")
    if os.path.exists(path):
        raise NotADirectoryError(f"{owner}: {argument} {path!r} is a file, not a folder; {fix}")
    raise missing_path(owner, argument, path, fix)


def check_file(owner: str, argument: str, path: str, fix: str) -> None:
    """Refuse ``path`` given as ``argument`` unless it is a file (see :func:`check_folder`)."""
    if os.path.isfile(path):
        return
    if os.path.islink(path) and not os.path.exists(path):
        raise FileNotFoundError(f"{owner}: {argument} {path!r} is a symlink to {os.readlink(path)!r}, which does "
                                f"not exist; {fix}")
    if os.path.isdir(path):
        raise IsADirectoryError(f"{owner}: {argument} {path!r} is a folder, not a file; {fix}")
    raise missing_path(owner, argument, path, fix)


def announce(message: str) -> None:
    """One informational line on stderr (from the first process of a distributed run only,
    once per message per process): e.g. which copy of a dataset a source found by itself."""
    if message in _ANNOUNCED or os.environ.get("RANK", "0") not in ("", "0"):
        return
    _ANNOUNCED.add(message)
    print(message, file=sys.stderr, flush=True)


_ANNOUNCED: set[str] = set()


class DataSource:
    """Base class of data sources: ``len``, ``get_img``, ``get_gt_labels``, ``CLASSES``.

    Subclasses set ``self.CLASSES`` (tuple of names or ``None``) and implement ``__len__``,
    ``get_img`` and ``get_gt_labels``.
    """

    CLASSES: tuple[str, ...] | None = None

    def __len__(self) -> int:
        raise NotImplementedError

    def get_img(self, idx: int) -> Image.Image:
        """Sample ``idx`` as a PIL image (mode ``"RGB"`` or ``"L"``)."""
        raise NotImplementedError

    def get_gt_labels(self) -> np.ndarray:
        """Labels, int64, shape ``(len(self),)``; ``-1`` marks an unlabelled sample."""
        raise NotImplementedError

    def describe(self, idx: int) -> str:
        """Where sample ``idx`` comes from (a file path, or ``file[index]``), for messages."""
        return f"{type(self).__name__}[{idx}]"

    @property
    def class_names(self) -> tuple[str, ...] | None:
        """Same as ``CLASSES``."""
        return self.CLASSES

    def __repr__(self) -> str:
        classes = len(self.CLASSES) if self.CLASSES is not None else "no"
        return f"{type(self).__name__}({len(self)} samples, {classes} classes)"


def resolve_classes(owner: str, classes: Sequence[str] | str | None) -> tuple[str, ...] | None:
    """Class names from a list, or from a text file with one name per line."""
    if classes is None:
        return None
    if isinstance(classes, (str, os.PathLike)):
        path = os.fspath(classes)
        if not os.path.isfile(path):
            raise missing_path(owner, "classes", path, "give a text file with one class name per line, or a list of names")
        with open(path, encoding="utf-8") as fh:
            names = [line.strip() for line in fh if line.strip()]
    else:
        names = [str(c) for c in classes]
    if len(set(names)) != len(names):
        dupes = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"{owner}: classes has duplicate names: {', '.join(dupes)}")
    return tuple(names)


class ArraySource(DataSource):
    """A source backed by a uint8 array of images ``(N, H, W)`` or ``(N, H, W, C)`` (C in 1, 3, 4)
    and an int64 label array ``(N,)`` held in memory."""

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray | None,
        classes: Sequence[str] | None,
        color_type: str,
        origin: str,
    ) -> None:
        owner = type(self).__name__
        self.color_type = check_color_type(owner, color_type)
        images = np.asarray(images)
        if images.dtype != np.uint8:
            raise ValueError(f"{owner}: images in {origin} must be uint8, got {images.dtype}")
        if images.ndim == 4 and images.shape[-1] == 1:
            images = images[..., 0]
        if not (images.ndim == 3 or (images.ndim == 4 and images.shape[-1] in (3, 4))):
            raise ValueError(
                f"{owner}: images in {origin} must have shape (N, H, W) or (N, H, W, C) with C in 1, 3, 4; "
                f"got {tuple(images.shape)}"
            )
        if labels is None:
            labels = np.full(len(images), -1, dtype=np.int64)
        labels = np.asarray(labels)
        if labels.ndim != 1 or len(labels) != len(images):
            raise ValueError(
                f"{owner}: labels in {origin} must have shape ({len(images)},), got {tuple(labels.shape)}"
            )
        if labels.dtype.kind not in "iu":
            raise ValueError(f"{owner}: labels in {origin} must be integers, got {labels.dtype}")
        self.images = np.ascontiguousarray(images)
        self.labels = labels.astype(np.int64)
        self.CLASSES = tuple(classes) if classes is not None else None
        self.origin = origin

    def __len__(self) -> int:
        return len(self.images)

    def get_img(self, idx: int) -> Image.Image:
        arr = self.images[idx]
        if arr.ndim == 2:
            img = Image.fromarray(arr, "L")
        else:
            img = Image.fromarray(arr, "RGB" if arr.shape[-1] == 3 else "RGBA")
        return convert_color(img, self.color_type)

    def get_gt_labels(self) -> np.ndarray:
        return self.labels

    def describe(self, idx: int) -> str:
        return f"{self.origin}[{idx}]"


def as_str_path(value: Any) -> str:
    """``os.fspath`` with ``~`` expanded."""
    return os.path.expanduser(os.fspath(value))
