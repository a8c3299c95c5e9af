"""CIFAR-10 and CIFAR-100 from the official "python version" pickle batches.

CIFAR-10 (``cifar-10-batches-py/``): ``data_batch_1`` .. ``data_batch_5`` (train),
``test_batch`` (test), ``batches.meta`` (``label_names``). CIFAR-100 (``cifar-100-python/``):
``train``, ``test``, ``meta`` (``fine_label_names``, ``coarse_label_names``). Each batch is a
pickled dict with ``b"data"`` (N, 3072) uint8 rows (R plane, G plane, B plane of 32x32) and
``b"labels"`` / ``b"fine_labels"``.

The batches are pickles, the dataset's documented format. They are read with an
unpickler that accepts only plain containers and numpy arrays, so a tampered file cannot run
code.
"""
from __future__ import annotations

import os
import pickle
from typing import Any

import numpy as np

from .base import ArraySource, as_str_path, check_folder

_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("codecs", "encode"),
    ("_codecs", "encode"),  # bytes in protocol-2 pickles written by Python 3
}


class _SafeUnpickler(pickle.Unpickler):
    """An unpickler that refuses every global except numpy's array reconstruction."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} (not part of the CIFAR format)")


def load_pickle(path: str, owner: str) -> dict:
    """One CIFAR pickle file as a dict with ``str`` keys. Errors name the file."""
    try:
        with open(path, "rb") as fh:
            obj = _SafeUnpickler(fh, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as exc:
        raise ValueError(f"{owner}: {path} is not a CIFAR python batch: {exc}") from exc
    if not isinstance(obj, dict):
        raise ValueError(f"{owner}: {path} is not a CIFAR python batch (a {type(obj).__name__}, not a dict)")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _names(values: Any) -> tuple[str, ...]:
    return tuple(v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values)


class _CIFAR(ArraySource):
    base_folder = ""
    train_files: tuple[str, ...] = ()
    test_files: tuple[str, ...] = ()
    meta_file = ""
    label_key = ""
    names_key = ""
    num_classes = 0

    def __init__(self, root: str, split: str = "train", color_type: str = "color") -> None:
        owner = type(self).__name__
        root = as_str_path(root)
        if split not in ("train", "test"):
            raise ValueError(f"{owner}: split must be 'train' or 'test', got {split!r}")
        folder = self._find_folder(root)
        files = self.train_files if split == "train" else self.test_files
        images, labels = [], []
        for name in files:
            path = os.path.join(folder, name)
            if not os.path.isfile(path):
                where = folder if folder == root else f"{root} or {folder}"
                raise FileNotFoundError(f"{owner}: root {root!r} has no {name} (looked in {where}); extract the "
                                        f"official python version of {owner} ({self.base_folder}) into root")
            batch = load_pickle(path, owner)
            if "data" not in batch or self.label_key not in batch:
                raise ValueError(f"{owner}: {path} has no 'data'/'{self.label_key}' entries; is it a {owner} batch?")
            data = np.asarray(batch["data"])
            if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
                raise ValueError(f"{owner}: {path}: 'data' must be uint8 of shape (N, 3072), got "
                                 f"{data.dtype} {tuple(data.shape)}")
            images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
            labels.append(np.asarray(batch[self.label_key], dtype=np.int64))
        meta_path = os.path.join(folder, self.meta_file)
        classes = None
        if os.path.isfile(meta_path):
            meta = load_pickle(meta_path, owner)
            if self.names_key in meta:
                classes = _names(meta[self.names_key])
        all_labels = np.concatenate(labels)
        if len(all_labels) and (all_labels.min() < 0 or all_labels.max() >= self.num_classes):
            raise ValueError(f"{owner}: labels in {folder} must be in 0..{self.num_classes - 1}")
        super().__init__(np.concatenate(images), all_labels, classes, color_type, origin=folder)
        self.root, self.split = root, split

    def _find_folder(self, root: str) -> str:
        owner = type(self).__name__
        check_folder(owner, "root", root, f"give the extracted '{self.base_folder}' folder or its parent")
        nested = os.path.join(root, self.base_folder)
        if os.path.isdir(nested) and not os.path.isfile(os.path.join(root, self.test_files[0])):
            return nested
        return root


class CIFAR10(_CIFAR):
    """CIFAR-10 (50000 train / 10000 test 32x32 RGB images, 10 classes).

    Args:
        root: the extracted ``cifar-10-batches-py`` folder, or the folder containing it.
        split: ``"train"`` (``data_batch_1`` .. ``5``) or ``"test"`` (``test_batch``).
        color_type: ``"color"`` (RGB, default), ``"grayscale"`` (L) or ``"unchanged"`` (RGB).
    """

    base_folder = "cifar-10-batches-py"
    train_files = tuple(f"data_batch_{i}" for i in range(1, 6))
    test_files = ("test_batch",)
    meta_file = "batches.meta"
    label_key = "labels"
    names_key = "label_names"
    num_classes = 10


class CIFAR100(_CIFAR):
    """CIFAR-100 (50000 train / 10000 test 32x32 RGB images, 100 fine classes).

    Args:
        root: the extracted ``cifar-100-python`` folder, or the folder containing it.
        split: ``"train"`` (file ``train``) or ``"test"`` (file ``test``).
        color_type: ``"color"`` (RGB, default), ``"grayscale"`` (L) or ``"unchanged"`` (RGB).

    Labels are the fine labels; class names come from ``meta``'s ``fine_label_names``.
    """

    base_folder = "cifar-100-python"
    train_files = ("train",)
    test_files = ("test",)
    meta_file = "meta"
    label_key = "fine_labels"
    names_key = "fine_label_names"
    num_classes = 100
