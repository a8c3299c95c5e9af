"""``DeepClusterDataset``: one view plus a pseudo-label reassigned between epochs."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .base import DataSourceLike, shared_zeros
from .views import OneViewDataset


class DeepClusterDataset(OneViewDataset):
    """Like :class:`OneViewDataset`, plus ``pseudo_label``: the cluster the sample was last
    assigned to by :meth:`assign_labels` (-1 before any assignment).

    Args: as :class:`OneViewDataset`.

    Returns per sample ``{"img": Tensor (C, H, W), "label": int, "idx": int,
    "pseudo_label": int}``.

    Reassignment and DataLoader workers: the pseudo-labels live in a shared-memory tensor that
    :meth:`assign_labels` overwrites in place. Workers created after the call (the default,
    ``persistent_workers=False``, re-creates them every epoch) always see the new labels.
    Persistent workers share the same memory and see them too, for every batch they load after
    the call; but batches they had already prefetched keep the old labels, so call
    ``assign_labels`` before the epoch's DataLoader iterator is created (as the DeepCluster
    hook does, at the start of each epoch), or re-create the DataLoader.
    """

    def __init__(
        self,
        data_source: DataSourceLike,
        pipeline: list,
        on_bad_sample: str = "error",
        augment_on: str = "cpu",
    ) -> None:
        super().__init__(data_source, pipeline, on_bad_sample, augment_on)
        self._pseudo_labels = shared_zeros(len(self))
        self._pseudo_labels.fill_(-1)

    def assign_labels(self, labels: np.ndarray | torch.Tensor | list[int]) -> None:
        """Set every sample's pseudo-label.

        Args:
            labels: integer labels, shape ``(len(self),)`` (numpy array, tensor or list).
        """
        owner = type(self).__name__
        values = labels.detach().cpu() if isinstance(labels, torch.Tensor) else torch.as_tensor(np.asarray(labels))
        if values.dim() != 1 or values.numel() != len(self):
            raise ValueError(
                f"{owner}.assign_labels: expected {len(self)} labels (one per sample), got shape {tuple(values.shape)}"
            )
        if values.is_floating_point() or values.dtype == torch.bool or values.is_complex():
            raise ValueError(f"{owner}.assign_labels: labels must be integers, got {values.dtype}")
        self._pseudo_labels.copy_(values.to(torch.int64))

    @property
    def clustering_labels(self) -> np.ndarray:
        """The current pseudo-labels (a copy), int64, shape ``(len(self),)``."""
        return self._pseudo_labels.numpy().copy()

    def __getitem__(self, idx: int) -> dict[str, Any]:
        sample = super().__getitem__(idx)
        sample["pseudo_label"] = int(self._pseudo_labels[sample["idx"]])
        return sample
