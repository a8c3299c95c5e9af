"""MNIST and Fashion-MNIST from IDX files (gzipped or not).

Files (standard names): ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``, each optionally ending in ``.gz``.
They are looked for in ``root``, then ``root/raw``, ``root/<Name>/raw`` and ``root/<name>``
(torchvision's and common layouts); Fashion-MNIST also in
``/usr/share/datasets/fashion-mnist`` (Debian package ``dataset-fashion-mnist``).

IDX format: a big-endian header ``00 00 <type> <ndim>`` (type ``0x08`` = unsigned byte),
``ndim`` int32 sizes, then the data. Images have ndim 3 ``(N, 28, 28)``; labels ndim 1.
"""
from __future__ import annotations

import gzip
import os
import struct

import numpy as np

from .base import ArraySource, as_str_path

SYSTEM_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"

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
        folders = self._candidate_folders()
        for folder in folders:
            image_path = _find_file([folder], image_name)
            label_path = _find_file([folder], label_name)
            if image_path and label_path:
                break
        else:
            where = f"root {self.root!r}" if self.root is not None else "root (not given)"
            if self.root is not None and not os.path.isdir(self.root):
                where = f"root {self.root!r} does not exist"
            else:
                where = f"no {image_name}[.gz] with {label_name}[.gz] in {where}"
            extra = f" or {', '.join(self.system_dirs)}" if self.system_dirs else ""
            raise FileNotFoundError(f"{owner}: {where}{extra}; {self.fix}")
        images = read_idx(image_path, 3)
        labels = read_idx(label_path, 1)
        if len(images) != len(labels):
            raise ValueError(f"{owner}: {image_path} has {len(images)} images but {label_path} has {len(labels)} labels")
        if len(labels) and labels.max() >= len(self.names):
            raise ValueError(f"{owner}: {label_path}: label {int(labels.max())} is out of range 0..{len(self.names) - 1}")
        super().__init__(images, labels, self.names, color_type, origin=image_path)
        self.image_file, self.label_file = image_path, label_path

    def _candidate_folders(self) -> list[str]:
        folders: list[str] = []
        if self.root is not None:
            name = type(self).__name__
            folders += [self.root, os.path.join(self.root, "raw"), os.path.join(self.root, name, "raw"),
                        os.path.join(self.root, name.lower()), os.path.join(self.root, name)]
        folders += list(self.system_dirs)
        return folders


class FashionMNIST(_IDXSource):
    """Fashion-MNIST (60000 train / 10000 test 28x28 grey images, 10 classes).

    Args:
        root: folder with the IDX files (also searched: ``raw/``, ``FashionMNIST/raw/``);
            default and fallback ``/usr/share/datasets/fashion-mnist``.
        split: ``"train"`` or ``"test"``.
        color_type: ``"grayscale"`` (mode L, default) or ``"color"`` (3-channel RGB copies, for
            backbones and pipelines that expect 3 channels).
    """

    system_dirs = (SYSTEM_FASHION_MNIST,)
    fix = ("install the files with 'apt-get install -y dataset-fashion-mnist' or put the Fashion-MNIST "
           "IDX files (train-images-idx3-ubyte.gz ...) in root")
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
