"""Image files on disk: ``ImageFolder`` (a folder tree) and ``ImageList`` (a list file)."""
from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from PIL import Image

from .base import DataSource, as_str_path, check_color_type, check_file, check_folder, load_image, resolve_classes

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".pbm", ".bmp", ".tif", ".tiff", ".webp", ".gif")


def is_image_file(name: str) -> bool:
    """Whether a file name has a common image extension (case-insensitive)."""
    return name.lower().endswith(IMG_EXTENSIONS)


def _walk_images(top: str) -> list[str]:
    """Image files under ``top`` (recursive, following symlinked folders once, skipping hidden
    entries), as sorted paths relative to ``top`` with ``/`` separators."""
    found: list[str] = []
    seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(top, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:  # a symlink cycle or a folder linked twice
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        rel_dir = os.path.relpath(dirpath, top)
        for name in filenames:
            if not name.startswith(".") and is_image_file(name):
                rel = name if rel_dir == "." else os.path.join(rel_dir, name)
                found.append(rel.replace(os.sep, "/"))
    found.sort()
    return found


def scan_folder(
    root: str, labelled: bool | None = None, classes: Sequence[str] | None = None, owner: str = "ImageFolder"
) -> tuple[list[str], np.ndarray, tuple[str, ...] | None]:
    """Find the images of a folder tree.

    Args:
        root: the folder.
        labelled: ``True``: each sub-folder of ``root`` is a class (images at any depth below
            it); ``False``: every image at any depth, unlabelled; ``None``: labelled when
            ``root`` has sub-folders with images and no image files of its own.
        classes: class names in label order (labelled only); sub-folders not named here are an
            error. Default: the sorted sub-folder names.
        owner: the class name used in error messages.

    Returns:
        ``(paths relative to root, int64 labels (-1 when unlabelled), class names or None)``,
        sorted by relative path.
    """
    check_folder(owner, "root", root, "give a folder of images (class sub-folders or a flat folder)")
    entries = sorted(e for e in os.listdir(root) if not e.startswith("."))
    top_files = [e for e in entries if is_image_file(e) and os.path.isfile(os.path.join(root, e))]
    subdirs = [e for e in entries if os.path.isdir(os.path.join(root, e))]
    if labelled is None:
        labelled = bool(subdirs) and not top_files
    if not labelled:
        if classes is not None:
            raise ValueError(f"{owner}: classes given but {root!r} is read as an unlabelled folder; set labelled = true")
        paths = _walk_images(root)
        return paths, np.full(len(paths), -1, dtype=np.int64), None
    if top_files:
        raise ValueError(
            f"{owner}: {root!r} has image files of its own ({top_files[0]!r}, ...) besides class folders; "
            "move them into a class folder or set labelled = false"
        )
    if classes is None:
        names = tuple(subdirs)
    else:
        names = tuple(classes)
        unknown = [d for d in subdirs if d not in names]
        if unknown:
            raise ValueError(f"{owner}: folder {os.path.join(root, unknown[0])!r} is not one of the given classes")
    paths: list[str] = []
    labels: list[int] = []
    for label, name in enumerate(names):
        class_dir = os.path.join(root, name)
        if not os.path.isdir(class_dir):
            continue  # a class with no folder has no samples
        for rel in _walk_images(class_dir):
            paths.append(f"{name}/{rel}")
            labels.append(label)
    order = sorted(range(len(paths)), key=paths.__getitem__)
    return [paths[i] for i in order], np.asarray(labels, dtype=np.int64)[order], names


class _ImageFiles(DataSource):
    """Shared reading of the file-based sources: subclasses set ``root``, ``paths`` (relative
    to ``root``, or absolute), ``labels`` (int64) and ``color_type``."""

    root: str
    paths: list[str]
    labels: np.ndarray
    color_type: str

    def __len__(self) -> int:
        return len(self.paths)

    def get_img(self, idx: int) -> Image.Image:
        return load_image(os.path.join(self.root, self.paths[idx]), self.color_type)

    def get_gt_labels(self) -> np.ndarray:
        return self.labels

    def describe(self, idx: int) -> str:
        return os.path.join(self.root, self.paths[idx])


class ImageFolder(_ImageFiles):
    """Images in a folder tree: ``root/<class>/**/<image>`` (labelled, classes are the sorted
    sub-folder names) or ``root/**/<image>`` (flat, unlabelled: labels are -1).

    Args:
        root: the folder.
        labelled: ``None`` (default) decides from the layout (class folders and no image files
            at the top -> labelled); ``True`` / ``False`` force it.
        classes: class names in label order (a list, or a text file with one per line), to fix
            label numbers instead of sorting the folder names (e.g. ``classes.txt`` written by
            ``selfsup-data-convert export``).
        color_type: ``"color"`` (RGB, default), ``"grayscale"`` (L), ``"unchanged"`` (L for grey
            files, RGB otherwise).

    Files: the usual image extensions (any case); hidden files and folders are skipped;
    order is sorted by relative path, so it is the same on every machine.
    """

    def __init__(
        self,
        root: str,
        labelled: bool | None = None,
        classes: list[str] | str | None = None,
        color_type: str = "color",
    ) -> None:
        self.root = as_str_path(root)
        self.color_type = check_color_type("ImageFolder", color_type)
        names = resolve_classes("ImageFolder", classes)
        self.paths, self.labels, self.CLASSES = scan_folder(self.root, labelled, names)
        if not self.paths:
            raise ValueError(f"ImageFolder: no image files ({', '.join(IMG_EXTENSIONS)}) under root {self.root!r}")


def parse_image_list(ann_file: str) -> tuple[list[str], np.ndarray]:
    """Read a list file of ``path [label]`` lines.

    Blank lines and lines starting with ``#`` are ignored. A path may contain spaces only
    when a label follows it. Returns ``(paths, int64 labels with -1 for unlabelled lines)``.
    Raises ``ValueError`` naming the file and line number for a malformed line.
    """
    paths: list[str] = []
    labels: list[int] = []
    with open(ann_file, encoding="utf-8") as fh:
        for number, raw in enumerate(fh, start=1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.rsplit(None, 1)
            if len(parts) == 1:
                paths.append(parts[0])
                labels.append(-1)
                continue
            path, label_text = parts
            try:
                label = int(label_text)
            except ValueError:
                raise ValueError(
                    f"ImageList: {ann_file}:{number}: expected 'path [label]' with an integer label, got {line!r}"
                ) from None
            if label < -1:
                raise ValueError(f"ImageList: {ann_file}:{number}: label must be >= 0 (or -1 for none), got {label}")
            paths.append(path)
            labels.append(label)
    return paths, np.asarray(labels, dtype=np.int64)


class ImageList(_ImageFiles):
    """Images named in a text file, one ``path [label]`` per line (MMSelfSup's list format).

    Args:
        ann_file: the list file. Blank lines and ``#`` comments are ignored; a line without a
            label gets -1.
        root: folder the paths are relative to; default: the list file's folder. Absolute
            paths are used as they are.
        classes: class names in label order (a list, or a text file with one per line).
        color_type: ``"color"`` (RGB, default), ``"grayscale"`` (L), ``"unchanged"``.

    Files are not checked when the list is read (that would stat every file); a missing or
    corrupt one is reported with its path when it is loaded.
    """

    def __init__(
        self,
        ann_file: str,
        root: str | None = None,
        classes: list[str] | str | None = None,
        color_type: str = "color",
    ) -> None:
        self.ann_file = as_str_path(ann_file)
        check_file("ImageList", "ann_file", self.ann_file, "give a text file of 'path [label]' lines "
                   "(selfsup-data-convert imagelist ROOT -o FILE writes one)")
        self.root = as_str_path(root) if root is not None else os.path.dirname(os.path.abspath(self.ann_file))
        check_folder("ImageList", "root", self.root, "give the folder the listed paths are relative to")
        self.color_type = check_color_type("ImageList", color_type)
        self.CLASSES = resolve_classes("ImageList", classes)
        self.paths, self.labels = parse_image_list(self.ann_file)
        if not self.paths:
            raise ValueError(f"ImageList: ann_file {self.ann_file!r} lists no images")
        if self.CLASSES is not None and self.labels.max() >= len(self.CLASSES):
            raise ValueError(
                f"ImageList: ann_file {self.ann_file!r} has label {int(self.labels.max())} "
                f"but classes names only {len(self.CLASSES)}"
            )
