"""Dataset wrappers: ``ConcatDataset`` and ``RepeatDataset``."""
from __future__ import annotations

import bisect
from typing import Any

import numpy as np
from torch.utils.data import Dataset


def _device_transform(owner: str, datasets: list[Any]) -> Any:
    transforms = [getattr(d, "device_transform", None) for d in datasets]
    if all(t is None for t in transforms):
        return None
    if any(t is None for t in transforms):
        raise ValueError(
            f"{owner}: some datasets augment on the device and some on the CPU; give them all the same augment_on"
        )
    return transforms[0]


class ConcatDataset(Dataset):
    """Several datasets one after the other.

    Args:
        datasets: built datasets (``datasets = [{type = "OneViewDataset", ...}, ...]``).
            When they augment on the device, the first one's ``device_transform`` is used
            for all (their device pipelines should be the same).

    Sample ``i`` is sample ``i - offset`` of the dataset it falls in, with ``idx`` rewritten
    to ``i`` (so indices stay unique, e.g. for memory banks).
    """

    def __init__(self, datasets: list) -> None:
        if not isinstance(datasets, (list, tuple)) or not datasets:
            raise ValueError("ConcatDataset: datasets must be a non-empty list of datasets")
        for i, dataset in enumerate(datasets):
            if not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__"):
                raise ValueError(f"ConcatDataset: datasets[{i}] is not a dataset (a {type(dataset).__name__})")
        self.datasets = list(datasets)
        self.cumulative_sizes = np.cumsum([len(d) for d in self.datasets]).tolist()
        self.device_transform = _device_transform("ConcatDataset", self.datasets)

    def __len__(self) -> int:
        return self.cumulative_sizes[-1]

    def locate(self, idx: int) -> tuple[int, int]:
        """``(dataset number, index inside it)`` of global index ``idx``."""
        n = len(self)
        idx = int(idx)
        if not -n <= idx < n:
            raise IndexError(f"ConcatDataset: index {idx} out of range for {n} samples")
        idx %= n
        which = bisect.bisect_right(self.cumulative_sizes, idx)
        return which, idx - (self.cumulative_sizes[which - 1] if which else 0)

    def __getitem__(self, idx: int) -> Any:
        which, inner = self.locate(idx)
        sample = self.datasets[which][inner]
        if isinstance(sample, dict) and "idx" in sample:
            sample["idx"] = sample["idx"] + (self.cumulative_sizes[which - 1] if which else 0)
        return sample

    @property
    def num_skipped(self) -> int:
        """Unreadable samples skipped by the wrapped datasets."""
        return sum(getattr(d, "num_skipped", 0) for d in self.datasets)

    @property
    def CLASSES(self) -> Any:  # noqa: N802 - MMSelfSup's name
        """The first dataset's class names."""
        return getattr(self.datasets[0], "CLASSES", None)


class RepeatDataset(Dataset):
    """A dataset repeated ``times`` times (short datasets, fewer epoch boundaries).

    Args:
        dataset: a built dataset.
        times: repetitions (>= 1); ``len = times * len(dataset)``, sample ``i`` is
            ``dataset[i % len(dataset)]`` (its ``idx`` unchanged, so a repeated image keeps
            its memory-bank slot).
    """

    def __init__(self, dataset: Any, times: int) -> None:
        if isinstance(times, bool) or not isinstance(times, int) or times < 1:
            raise ValueError(f"RepeatDataset: times must be an integer >= 1, got {times!r}")
        if not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__"):
            raise ValueError(f"RepeatDataset: dataset is not a dataset (a {type(dataset).__name__})")
        self.dataset = dataset
        self.times = times
        self.device_transform = getattr(dataset, "device_transform", None)

    def __len__(self) -> int:
        return self.times * len(self.dataset)

    def __getitem__(self, idx: int) -> Any:
        n = len(self)
        idx = int(idx)
        if not -n <= idx < n:
            raise IndexError(f"RepeatDataset: index {idx} out of range for {n} samples")
        return self.dataset[idx % len(self.dataset)]

    @property
    def num_skipped(self) -> int:
        """Unreadable samples skipped by the wrapped dataset."""
        return getattr(self.dataset, "num_skipped", 0)

    @property
    def CLASSES(self) -> Any:  # noqa: N802
        """The wrapped dataset's class names."""
        return getattr(self.dataset, "CLASSES", None)
