"""MNIST and Fashion-MNIST from IDX files (gzipped or not).

Files (standard names): ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``, each optionally ending in ``.gz``.
They are looked for in ``root``, then ``root/raw``, ``root/<Name>/raw`` and ``root/<name>``
(torchvision's and common layouts). A ``root`` given is used or refused (it does not exist,
is a file, or lacks the images or the labels file), never replaced by another copy. Without
``root``, Fashion-MNIST is read from ``data/fashion-mnist`` (in the working directory), else
``/usr/share/datasets/fashion-mnist`` (Debian package ``dataset-fashion-mnist``), and a line
on stderr says which files were read.

IDX format: a big-endian header ``00 00 <type> <ndim>`` (type ``0x08`` = unsigned byte),
``ndim`` int32 sizes, then the data. Images have ndim 3 ``(N, 28, 28)``; labels ndim 1.
"""
from __future__ import annotations

import gzip
import os
import struct

import numpy as np

from .base import ArraySource, announce, as_str_path, check_folder

SYSTEM_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"
#: Where the shipped configs' users put their copy (relative to the working directory).
LOCAL_FASHION_MNIST = "data/fashion-mnist"

FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
MNIST_CLASSES = tuple(f"{i} - {w}" for i, w in enumerate(
    ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")))

_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def read_idx(path: str, ndim: int) -> np.ndarray:
    """Read an unsigned-byte IDX file (``.gz`` decompressed) with ``ndim`` dimensions.

    Returns a uint8 array of the stored shape. Raises ``ValueError`` naming the file when
    the magic number, the number of dimensions or the size does not match.
    """
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as fh:
            data = fh.read()
    except (OSError, EOFError) as exc:  # includes gzip.BadGzipFile
        raise ValueError(f"cannot read IDX file {path}: {' '.join(str(exc).split())}") from exc
    if len(data) < 4:
        raise ValueError(f"{path} is not an IDX file (only {len(data)} bytes)")
    zero1, zero2, dtype_code, dims = data[0], data[1], data[2], data[3]
    if zero1 != 0 or zero2 != 0 or dtype_code != 0x08:
        raise ValueError(
            f"{path} is not an unsigned-byte IDX file (magic number 0x{data[:4].hex()}, "
            f"expected 0x000008{ndim:02x})"
        )
    if dims != ndim:
        raise ValueError(f"{path}: IDX file has {dims} dimensions, expected {ndim} (magic 0x{data[:4].hex()})")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path}: IDX header is truncated")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    expected = int(np.prod(shape, dtype=np.int64))
    if len(data) - header != expected:
        raise ValueError(
            f"{path}: IDX size mismatch: header says {shape} ({expected} bytes of data), "
            f"file has {len(data) - header}"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def _find_file(folders: list[str], name: str) -> str | None:
    for folder in folders:
        for candidate in (name, name + ".gz"):
            path = os.path.join(folder, candidate)
            if os.path.isfile(path):
                return path
    return None


class _IDXSource(ArraySource):
    system_dirs: tuple[str, ...] = ()
    fix = ""
    names: tuple[str, ...] = ()

    def __init__(self, root: str | None = None, split: str = "train", color_type: str = "grayscale") -> None:
        owner = type(self).__name__
        if split not in _FILES:
            raise ValueError(f"{owner}: split must be 'train' or 'test', got {split!r}")
        self.root = as_str_path(root) if root is not None else None
        self.split = split
        image_name, label_name = _FILES[split]
        if self.root is not None:  # used or refused, never replaced by another copy
            image_path, label_path = self._find_in_root(image_name, label_name)
        else:
            image_path, label_path = self._find_default(image_name, label_name)
        images = read_idx(image_path, 3)
        labels = read_idx(label_path, 1)
        if len(images) != len(labels):
            raise ValueError(f"{owner}: {image_path} has {len(images)} images but {label_path} has {len(labels)} labels")
        if len(labels) and labels.max() >= len(self.names):
            raise ValueError(f"{owner}: {label_path}: label {int(labels.max())} is out of range 0..{len(self.names) - 1}")
        super().__init__(images, labels, self.names, color_type, origin=image_path)
        self.image_file, self.label_file = image_path, label_path

    def _find_in_root(self, image_name: str, label_name: str) -> tuple[str, str]:
        """The IDX pair in the given ``root`` (or its ``raw/``, ``<Name>/raw/`` ... layouts);
        a root that is not a folder or lacks either file is refused in one line."""
        owner = type(self).__name__
        assert self.root is not None
        check_folder(owner, "root", self.root, self.fix)
        name = type(self).__name__
        folders = [self.root, os.path.join(self.root, "raw"), os.path.join(self.root, name, "raw"),
                   os.path.join(self.root, name.lower()), os.path.join(self.root, name)]
        half = None
        for folder in folders:
            image_path, label_path = _find_file([folder], image_name), _find_file([folder], label_name)
            if image_path and label_path:
                return image_path, label_path
            if half is None and (image_path or label_path):
                half = (image_path, label_path)
        if half is not None:
            found, lacking = (half[0], label_name) if half[0] else (half[1], image_name)
            raise FileNotFoundError(f"{owner}: root {self.root!r} has {found} but no {lacking}[.gz] next to it; "
                                    f"{self.fix}")
        raise FileNotFoundError(
            f"{owner}: root {self.root!r} has no {image_name}[.gz] with {label_name}[.gz] (looked in it and its "
            f"raw/, {name}/raw/, {name.lower()}/, {name}/ folders); {self.fix}")

    def _find_default(self, image_name: str, label_name: str) -> tuple[str, str]:
        """No root given: the first of :attr:`system_dirs` with the IDX pair, announced on stderr."""
        owner = type(self).__name__
        for folder in self.system_dirs:
            image_path, label_path = _find_file([folder], image_name), _find_file([folder], label_name)
            if image_path and label_path:
                announce(f"{owner}: no root given; reading {os.path.abspath(image_path)} and "
                         f"{os.path.abspath(label_path)}")
                return image_path, label_path
        searched = f" in {', '.join(self.system_dirs)}" if self.system_dirs else ""
        raise FileNotFoundError(f"{owner}: root is not given and there is no {image_name}[.gz] with "
                                f"{label_name}[.gz]{searched}; {self.fix}")


class FashionMNIST(_IDXSource):
    """Fashion-MNIST (60000 train / 10000 test 28x28 grey images, 10 classes).

    Args:
        root: folder with the IDX files (also searched: ``raw/``, ``FashionMNIST/raw/``); a
            wrong one is refused. Default (not given): ``data/fashion-mnist``, else
            ``/usr/share/datasets/fashion-mnist``.
        split: ``"train"`` or ``"test"``.
        color_type: ``"grayscale"`` (mode L, default) or ``"color"`` (3-channel RGB copies, for
            backbones and pipelines that expect 3 channels).
    """

    system_dirs = (LOCAL_FASHION_MNIST, SYSTEM_FASHION_MNIST)
    fix = ("put the Fashion-MNIST IDX files (train-images-idx3-ubyte.gz ...) in root, or leave root out to read "
           "the copy 'apt-get install -y dataset-fashion-mnist' installs")
    names = FASHION_MNIST_CLASSES


class MNIST(_IDXSource):
    """MNIST (60000 train / 10000 test 28x28 grey digits, 10 classes).

    Args:
        root: folder with the IDX files (also searched: ``raw/``, ``MNIST/raw/``).
        split: ``"train"`` or ``"test"``.
        color_type: ``"grayscale"`` (mode L, default) or ``"color"`` (3-channel RGB).
    """

    fix = "put the MNIST IDX files (train-images-idx3-ubyte.gz ...) in root"
    names = MNIST_CLASSES
