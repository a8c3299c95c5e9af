"""``Subset``: a fixed part of another data source, for short runs and small experiments."""
from __future__ import annotations

import numpy as np
from PIL import Image

from .base import DataSource


class Subset(DataSource):
    """``num_samples`` samples of ``source``, chosen once when the source is built.

    Args:
        source: the data source to draw from (a table with ``type``, built first).
        num_samples: how many samples to keep; at most ``len(source)``.
        seed: ``None`` keeps the first ``num_samples`` samples in order; an integer draws a
            random subset with that seed (the same subset on every process and every run), kept
            in the source's order.
        per_class: draw the same number of samples from every class (``num_samples`` must be a
            multiple of the number of classes, and the source must be labelled).

    Example, 10k random training images of Fashion-MNIST::

        data_source = { type = "Subset", num_samples = 10000, seed = 0,
                        source = { type = "FashionMNIST", split = "train" } }
    """

    def __init__(self, source: DataSource, num_samples: int, seed: int | None = 0, per_class: bool = False) -> None:
        total = len(source)
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or not 1 <= num_samples <= total:
            raise ValueError(f"Subset: num_samples must be an integer from 1 to {total} (the size of the source), "
                             f"got {num_samples!r}")
        labels = np.asarray(source.get_gt_labels(), dtype=np.int64)
        if per_class:
            indices = self._per_class(labels, num_samples, seed)
        elif seed is None:
            indices = np.arange(num_samples)
        else:
            indices = np.sort(np.random.default_rng(seed).permutation(total)[:num_samples])
        self.source = source
        self.indices = indices.astype(np.int64)
        self.labels = labels[self.indices]
        self.CLASSES = getattr(source, "CLASSES", None)

    @staticmethod
    def _per_class(labels: np.ndarray, num_samples: int, seed: int | None) -> np.ndarray:
        classes = np.unique(labels)
        if (classes < 0).any():
            raise ValueError("Subset: per_class = true needs a labelled source, and this one has unlabelled samples")
        if num_samples % len(classes):
            raise ValueError(f"Subset: with per_class = true, num_samples must be a multiple of the "
                             f"{len(classes)} classes, got {num_samples}")
        each = num_samples // len(classes)
        rng = np.random.default_rng(seed)
        chosen = []
        for label in classes:
            members = np.flatnonzero(labels == label)
            if len(members) < each:
                raise ValueError(f"Subset: class {int(label)} has {len(members)} samples, fewer than the "
                                 f"{each} per class that num_samples = {num_samples} needs")
            chosen.append(members[:each] if seed is None else rng.permutation(members)[:each])
        return np.sort(np.concatenate(chosen))

    def __len__(self) -> int:
        return len(self.indices)

    def get_img(self, idx: int) -> Image.Image:
        return self.source.get_img(int(self.indices[idx]))

    def get_gt_labels(self) -> np.ndarray:
        return self.labels

    def describe(self, idx: int) -> str:
        return self.source.describe(int(self.indices[idx]))
