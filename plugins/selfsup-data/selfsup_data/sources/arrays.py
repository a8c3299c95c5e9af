"""``NumpyArrays``: images and labels from an ``.npz`` file."""
from __future__ import annotations

import zipfile

import numpy as np

from .base import ArraySource, as_str_path, check_file, resolve_classes


class NumpyArrays(ArraySource):
    """Images from an ``.npz`` archive (``np.savez``), held in memory.

    Args:
        file: the ``.npz`` file.
        images_key: array of uint8 images, shape ``(N, H, W)`` (grey) or ``(N, H, W, C)``
            with C = 1, 3 or 4 (channels last).
        labels_key: array of ``N`` integer labels; ``None``, or a key the file does not have,
            means unlabelled (-1).
        classes: class names in label order (a list, or a text file with one per line);
            default: the file's ``classes`` array if it has one.
        color_type: ``"unchanged"`` (default: L for grey arrays, RGB otherwise),
            ``"color"`` (RGB) or ``"grayscale"`` (L).

    Pickled object arrays are refused (``allow_pickle=False``).
    """

    def __init__(
        self,
        file: str,
        images_key: str = "images",
        labels_key: str | None = "labels",
        classes: list[str] | str | None = None,
        color_type: str = "unchanged",
    ) -> None:
        path = as_str_path(file)
        check_file("NumpyArrays", "file", path, "give an .npz file written with numpy.savez")
        try:
            with np.load(path, allow_pickle=False) as npz:
                keys = list(npz.files)
                if images_key not in keys:
                    raise ValueError(
                        f"NumpyArrays: {path} has no array {images_key!r} (images_key); it has {', '.join(keys) or 'none'}"
                    )
                images = npz[images_key]
                labels = npz[labels_key] if labels_key is not None and labels_key in keys else None
                stored = npz["classes"] if classes is None and "classes" in keys else None
        except (OSError, zipfile.BadZipFile, EOFError) as exc:
            raise ValueError(f"NumpyArrays: cannot read {path}: {' '.join(str(exc).split())}") from exc
        names = resolve_classes("NumpyArrays", classes)
        if names is None and stored is not None:
            names = tuple(str(c) for c in stored.tolist())
        super().__init__(images, labels, names, color_type, origin=path)
        self.file = path
