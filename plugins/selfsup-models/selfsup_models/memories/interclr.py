"""InterCLRMemory: the feature bank with online clustering of InterCLR (MMSelfSup 0.x name).

Xie, Zhan, Liu, Ong and Loy, "Delving into Inter-Image Invariance for Unsupervised Visual
Representations", IJCV 2022. The memory keeps one unit-norm feature and one cluster label per
training image and the clusters' centroids. It is the same online clustering as ODC's samples
and centroids memories (MMSelfSup 0.x's ``InterCLRMemory`` and ``ODCMemory`` share it line
for line), so it extends :class:`~selfsup_models.memories.odc.ODCMemory`; InterCLR adds
:meth:`InterCLRMemory.update_simple_memory` (the bank update without relabelling, used with
offline labels) and :meth:`InterCLRMemory.assign_label` (offline labels from a k-means round).
"""
from __future__ import annotations

from typing import Any, Union

import torch
from selfsup_core.api import dist

from .odc import ODCMemory, _as_tensor, _EPS
from .simple import gather_updates

InitCfg = Union[dict, list[dict], None]


class InterCLRMemory(ODCMemory):
    """InterCLR's memory bank: features, cluster labels and centroids of every training image.

    Buffers (saved in checkpoints, the same on every process): ``feature_bank (length,
    feat_dim)``, ``label_bank (length,)`` long, ``centroids (num_classes, feat_dim)`` and
    ``initialized`` (see :class:`ODCMemory`).

    Filled once by :meth:`init_memory` (the ``InterCLRHook``'s k-means before the first
    epoch); then after every step :meth:`update_samples_memory` mixes the batch's key features
    into the bank, ``v <- normalize((1 - momentum) v + momentum normalize(f))``, and relabels
    those samples to their most similar centroid (online labels), or
    :meth:`update_simple_memory` mixes them without relabelling (offline labels). The hook
    recomputes the centroids and dissolves clusters smaller than ``min_cluster``
    (:meth:`update_centroids_memory`, :meth:`deal_with_small_clusters`).

    Args:
        length: number of samples (the training set's length).
        feat_dim: feature dimension (the neck's ``out_channels``).
        momentum: weight of the new feature (0.x config: 1.0, the bank holds the latest key).
        num_classes: number of clusters (> 1).
        min_cluster: clusters with fewer samples are dissolved and refilled by splitting the
            largest one (0.x: 20).
        split: how the largest cluster is halved: ``"kmeans"`` (0.x: scikit-learn's
            ``KMeans(2, random_state=0, max_iter=20)``) or ``"two_means"`` (torch 2-means).
        debug: 0.x's flag to print cluster sizes; accepted for configs migrated from 0.x (the
            hook logs cluster statistics every ``evaluate_interval`` iterations instead).
        init_cfg: accepted for uniformity (no learnable weights).
    """

    def __init__(self, length: int, feat_dim: int, momentum: float, num_classes: int, min_cluster: int = 20,
                 split: str = "kmeans", debug: bool = False, init_cfg: InitCfg = None) -> None:
        for key, value in (("length", length), ("feat_dim", feat_dim), ("num_classes", num_classes),
                           ("min_cluster", min_cluster)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"InterCLRMemory: {key} must be an integer, got {value!r}")
        if num_classes <= 1:
            raise ValueError(f"InterCLRMemory: num_classes (the number of clusters) must be > 1, got {num_classes}")
        if length < num_classes:
            raise ValueError(f"InterCLRMemory: length = {length} samples cannot form num_classes = {num_classes} "
                             "clusters; set length to the number of training images and num_classes <= length")
        if min_cluster < 0:
            raise ValueError(f"InterCLRMemory: min_cluster must be >= 0, got {min_cluster}")
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"InterCLRMemory: momentum must be in [0, 1], got {momentum}")
        super().__init__(length, feat_dim, momentum, num_classes, min_cluster=min_cluster, split=split,
                         init_cfg=init_cfg)
        self.debug = bool(debug)

    @torch.no_grad()
    def update_simple_memory(self, idx: torch.Tensor, feature: torch.Tensor) -> None:
        """Mix the batch's features into the bank without relabelling (offline labels).

        Args:
            idx: ``(N,)`` dataset indices of this process's batch.
            feature: ``(N, feat_dim)`` features (normalised here).

        Called by ``InterCLRMoCo`` after every step when ``online_labels = false``. The
        batches of every process are gathered first, so the replicas stay equal.
        """
        bank = self.feature_bank
        feature = feature.detach().to(device=bank.device, dtype=bank.dtype)
        feature = feature / (feature.norm(dim=1, keepdim=True) + _EPS)
        idx, feature = gather_updates(idx.to(bank.device), feature)
        mixed = (1 - self.momentum) * bank[idx] + self.momentum * feature
        bank[idx] = mixed / (mixed.norm(dim=1, keepdim=True) + _EPS)

    @torch.no_grad()
    def assign_label(self, label: Any) -> None:
        """Replace every sample's label with an offline clustering's (``(length,)``, every
        cluster non-empty); called by the ``InterCLRHook`` after each k-means round when
        ``online_labels = false``. Process 0's labels are broadcast."""
        label = _as_tensor(label, torch.long, self.label_bank.device)
        if label.shape != self.label_bank.shape:
            raise ValueError(f"InterCLRMemory.assign_label: expected {tuple(self.label_bank.shape)} labels, "
                             f"got {tuple(label.shape)}")
        if label.min() < 0 or label.max() >= self.num_classes:
            raise ValueError(f"InterCLRMemory.assign_label: labels must be in 0..{self.num_classes - 1}")
        counts = torch.bincount(label, minlength=self.num_classes)
        if (counts == 0).any():
            empty = torch.nonzero(counts == 0).flatten().tolist()
            raise ValueError(f"InterCLRMemory.assign_label: clusters {empty} are empty; every cluster needs a sample")
        self.label_bank.copy_(label)
        dist.broadcast(self.label_bank, 0)


__all__ = ["InterCLRMemory"]
