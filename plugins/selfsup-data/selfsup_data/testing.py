"""Small real image sets for plugin tests: no download, no network.

:func:`fashion_mnist_npz` writes the first ``num_samples`` Fashion-MNIST images of a split
(from ``/usr/share/datasets/fashion-mnist`` or ``data/fashion-mnist``, where the Debian
package ``dataset-fashion-mnist`` or the user put them) to a ``.npz`` that the
``NumpyArrays`` source reads. Where the files are missing it writes class-dependent synthetic
28x28 images instead, so a test still runs end to end (``real`` in the result says which).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .sources.mnist import FASHION_MNIST_CLASSES, FashionMNIST


def _synthetic(num_samples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Grey 28x28 images of 10 classes: a bright bar whose orientation and position depend on
    the class, with noise, so that augmentations and a contrastive loss have something to learn."""
    rng = np.random.default_rng(seed)
    labels = np.arange(num_samples) % 10
    images = rng.integers(0, 40, size=(num_samples, 28, 28)).astype(np.int64)
    for i, label in enumerate(labels):
        offset = 4 + 2 * (label % 5) + int(rng.integers(-1, 2))
        if label < 5:
            images[i, offset : offset + 6, 3:25] += 180
        else:
            images[i, 3:25, offset : offset + 6] += 180
    return np.clip(images, 0, 255).astype(np.uint8), labels.astype(np.int64)


def fashion_mnist_npz(path: str | os.PathLike[str], num_samples: int = 256, split: str = "train",
                      seed: int = 0) -> tuple[Path, bool]:
    """Write ``num_samples`` Fashion-MNIST images and labels of ``split`` to ``path`` (.npz with
    ``images``, ``labels``, ``classes``) and return ``(path, real)``; ``real`` is False when the
    dataset is not installed and synthetic images were written instead."""
    path = Path(path)
    try:
        root = "data/fashion-mnist" if os.path.isdir("data/fashion-mnist") else None
        source = FashionMNIST(root=root, split=split)
        images, labels, real = source.images[:num_samples], source.labels[:num_samples], True
    except FileNotFoundError:
        images, labels = _synthetic(num_samples, seed)
        real = False
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, images=images, labels=labels, classes=np.array(FASHION_MNIST_CLASSES))
    return path, real
