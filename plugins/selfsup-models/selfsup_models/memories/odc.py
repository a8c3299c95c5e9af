"""ODCMemory: the samples memory (features + pseudo-labels) and centroids memory of ODC."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Union

import numpy as np
import torch
from selfsup_core.api import SelfSupError, dist

from ..init import BaseModule
from .simple import gather_updates


class ODCMemoryError(SelfSupError, ValueError):
    """A setting of ODCMemory that the data makes impossible (e.g. ``min_cluster`` larger than
    every cluster): the CLI prints its message as one line, exit 2."""

InitCfg = Union[dict, list[dict], None]
_EPS = 1e-10


def _as_tensor(value: Any, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(value)
    return torch.as_tensor(value).to(device=device, dtype=dtype)


def two_means(features: torch.Tensor, iterations: int = 20) -> torch.Tensor:
    """Split ``features (M, D)`` into two groups with 2-means; returns a bool mask (M,).

    Deterministic: the first centre is the point farthest from the mean, the second the
    point farthest from the first; then Lloyd iterations on squared Euclidean distance.
    """
    mean = features.mean(dim=0, keepdim=True)
    first = features[torch.cdist(features, mean).squeeze(1).argmax()]
    second = features[torch.cdist(features, first[None]).squeeze(1).argmax()]
    centres = torch.stack([first, second])
    mask = torch.zeros(features.size(0), dtype=torch.bool, device=features.device)
    for _ in range(iterations):
        new_mask = torch.cdist(features, centres).argmin(dim=1) == 1
        if new_mask.all() or not new_mask.any():
            return new_mask
        if torch.equal(new_mask, mask):
            break
        mask = new_mask
        centres = torch.stack([features[~mask].mean(dim=0), features[mask].mean(dim=0)])
    return mask


SPLITS = ("kmeans", "two_means")


def sklearn_two_means(features: torch.Tensor) -> torch.Tensor:
    """MMSelfSup 0.x's split of the largest cluster: scikit-learn
    ``KMeans(n_clusters=2, random_state=0, max_iter=20, n_init=10)`` fitted on ``features
    (M, D)`` (on the CPU, in their dtype); returns the bool mask of ``labels_ == 1`` (M,), the
    half 0.x gives the emptied cluster's label. ``n_init=10`` is scikit-learn's default of
    0.x's time (it became 1 in scikit-learn 1.4)."""
    from sklearn.cluster import KMeans  # optional dependency, checked by ODCMemory(split="kmeans")

    fitted = KMeans(n_clusters=2, random_state=0, max_iter=20, n_init=10).fit(features.detach().cpu().numpy())
    return torch.from_numpy(fitted.labels_ == 1).to(features.device)


class ODCMemory(BaseModule):
    """Online Deep Clustering memories.

    Buffers (saved in checkpoints, replicated on every process):

    - ``feature_bank`` ``(length, feat_dim)``: a unit-norm running-average feature per sample;
    - ``label_bank`` ``(length,)`` long: each sample's pseudo-label (cluster);
    - ``centroids`` ``(num_classes, feat_dim)``: the mean feature of each cluster's samples;
    - ``loss_weight`` ``(num_classes,)``: class weights from :meth:`set_reweight`;
    - ``initialized``: whether :meth:`init_memory` has run.

    Every update gathers the batches of all processes first, and every process applies the
    same deterministic computation; centroids and labels are also broadcast from process 0
    after each structural change, so the replicas stay equal.

    Args:
        length: number of samples (the dataset length).
        feat_dim: feature dimension.
        momentum: weight of the new feature: ``v <- normalize((1 - momentum) v + momentum f)``.
        num_classes: number of clusters.
        min_cluster: clusters with fewer samples are dissolved by
            :meth:`deal_with_small_clusters`.
        split: how the largest cluster is halved to refill an emptied one: ``"kmeans"``
            (default, MMSelfSup 0.x: scikit-learn's ``KMeans``, see :func:`sklearn_two_means`;
            needs ``pip install scikit-learn``) or ``"two_means"`` (this package's
            deterministic torch 2-means, :func:`two_means`, no extra dependency; its halves
            can differ from 0.x's).
        init_cfg: accepted for uniformity (no learnable weights).
    """

    def __init__(
        self,
        length: int,
        feat_dim: int,
        momentum: float,
        num_classes: int,
        min_cluster: int = 20,
        split: str = "kmeans",
        init_cfg: InitCfg = None,
    ) -> None:
        super().__init__(init_cfg)
        if split not in SPLITS:
            raise ValueError(f"ODCMemory: split must be \"kmeans\" (0.x, scikit-learn) or \"two_means\", got {split!r}")
        if split == "kmeans":
            try:
                import sklearn.cluster  # noqa: F401
            except ImportError as exc:
                raise ValueError("ODCMemory: split = \"kmeans\" (MMSelfSup 0.x's split) needs scikit-learn, which is not "
                                 "installed; pip install scikit-learn, or set split = \"two_means\"") from exc
        self.split = split
        if length <= 0 or feat_dim <= 0 or num_classes <= 1:
            raise ValueError(
                f"ODCMemory: length and feat_dim must be > 0 and num_classes > 1, "
                f"got {length}, {feat_dim}, {num_classes}"
            )
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"ODCMemory: momentum must be in [0, 1], got {momentum}")
        self.length = length
        self.feat_dim = feat_dim
        self.momentum = momentum
        self.num_classes = num_classes
        self.min_cluster = min_cluster
        self.register_buffer("feature_bank", torch.zeros(length, feat_dim))
        self.register_buffer("label_bank", torch.zeros(length, dtype=torch.long))
        self.register_buffer("centroids", torch.zeros(num_classes, feat_dim))
        self.register_buffer("loss_weight", torch.full((num_classes,), 1.0 / num_classes))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))
        self.init_weights()

    # -- set-up ---------------------------------------------------------------------------
    @torch.no_grad()
    def init_memory(self, feature: Any, label: Any) -> None:
        """Fill the memories from a clustering of the whole dataset.

        Args:
            feature: ``(length, feat_dim)`` features (array or tensor; normalised here).
            label: ``(length,)`` cluster of each sample; every cluster must be non-empty.

        Process 0's values are broadcast, so every process ends with the same memories.
        """
        device = self.feature_bank.device
        feature = _as_tensor(feature, torch.float32, device)
        label = _as_tensor(label, torch.long, device)
        if feature.shape != self.feature_bank.shape or label.shape != self.label_bank.shape:
            raise ValueError(
                f"ODCMemory.init_memory: expected features {tuple(self.feature_bank.shape)} and labels "
                f"{tuple(self.label_bank.shape)}, got {tuple(feature.shape)} and {tuple(label.shape)}"
            )
        if label.min() < 0 or label.max() >= self.num_classes:
            raise ValueError(f"ODCMemory.init_memory: labels must be in 0..{self.num_classes - 1}")
        counts = torch.bincount(label, minlength=self.num_classes)
        if (counts == 0).any():
            empty = torch.nonzero(counts == 0).flatten().tolist()
            raise ValueError(f"ODCMemory.init_memory: clusters {empty} are empty; every cluster needs a sample")
        self.label_bank.copy_(label)
        self.feature_bank.copy_(feature / (feature.norm(dim=1, keepdim=True) + _EPS))
        dist.broadcast(self.label_bank, 0)
        dist.broadcast(self.feature_bank, 0)
        self.update_centroids_memory()
        self.initialized.fill_(True)

    # -- per iteration ------------------------------------------------------------------
    @torch.no_grad()
    def update_samples_memory(self, idx: torch.Tensor, feature: torch.Tensor) -> torch.Tensor:
        """Mix the batch's features into the samples memory and relabel those samples.

        Args:
            idx: ``(N,)`` dataset indices of this process's batch.
            feature: ``(N, feat_dim)`` features (normalised here).

        Returns:
            the fraction (0-d float tensor) of updated samples whose label changed; the new
            label of a sample is its most similar centroid (dot product with the updated,
            unit-norm feature).
        """
        if not bool(self.initialized):
            raise RuntimeError("ODCMemory.update_samples_memory called before init_memory")
        bank = self.feature_bank
        feature = feature.detach().to(device=bank.device, dtype=bank.dtype)
        feature = feature / (feature.norm(dim=1, keepdim=True) + _EPS)
        idx, feature = gather_updates(idx.to(bank.device), feature)
        mixed = (1 - self.momentum) * bank[idx] + self.momentum * feature
        mixed = mixed / (mixed.norm(dim=1, keepdim=True) + _EPS)
        bank[idx] = mixed
        new_label = (mixed @ self.centroids.t()).argmax(dim=1)
        change_ratio = (new_label != self.label_bank[idx]).float().mean()
        self.label_bank[idx] = new_label
        return change_ratio

    @torch.no_grad()
    def deal_with_small_clusters(self) -> None:
        """Dissolve clusters smaller than ``min_cluster`` and refill them.

        Each sample of a small cluster moves to the most similar centroid among the clusters
        that are not small. Each emptied cluster then takes half of the currently largest
        cluster: that cluster is split in two by 2-means on its features (``split``; by index
        halves if 2-means leaves a side empty), the part labelled 1 gets the emptied cluster's
        label, and both centroids are recomputed.
        """
        counts = torch.bincount(self.label_bank, minlength=self.num_classes)
        small = torch.nonzero(counts < self.min_cluster).flatten()
        if small.numel() == 0:
            return
        keep = torch.ones(self.num_classes, dtype=torch.bool, device=counts.device)
        keep[small] = False
        inclusion = torch.nonzero(keep).flatten()
        if inclusion.numel() == 0:
            raise ODCMemoryError(
                f"ODCMemory: every cluster has fewer than min_cluster={self.min_cluster} samples; "
                "lower min_cluster or num_classes"
            )
        moving = torch.nonzero(~keep[self.label_bank]).flatten()
        if moving.numel():
            similarity = self.feature_bank[moving] @ self.centroids[inclusion].t()
            self.label_bank[moving] = inclusion[similarity.argmax(dim=1)]
        dist.broadcast(self.label_bank, 0)
        for empty in small.tolist():
            self._redirect_empty_cluster(int(empty))

    def _redirect_empty_cluster(self, empty: int) -> None:
        counts = torch.bincount(self.label_bank, minlength=self.num_classes)
        if counts[empty] != 0:
            raise RuntimeError(f"ODCMemory: cluster {empty} is not empty")
        largest = int(counts.argmax())
        members = torch.nonzero(self.label_bank == largest).flatten()
        if members.numel() < 2:
            raise ValueError(
                f"ODCMemory: cannot refill empty cluster {empty}: the largest cluster has {members.numel()} sample(s)"
            )
        features = self.feature_bank[members]
        if not torch.isfinite(features).all():
            raise ValueError("ODCMemory: the samples memory holds non-finite features")
        second = sklearn_two_means(features) if self.split == "kmeans" else two_means(features)
        if second.all() or not second.any():
            second = torch.zeros_like(second)
            second[members.numel() // 2 :] = True
        self.label_bank[members[second]] = empty
        dist.broadcast(self.label_bank, 0)
        self.update_centroids_memory([largest, empty])

    @torch.no_grad()
    def update_centroids_memory(self, cluster_list: Union[Sequence[int], None] = None) -> None:
        """Recompute centroids as the mean feature of each cluster's samples.

        Args:
            cluster_list: the clusters to recompute; ``None`` for all. Empty clusters keep
                their previous centroid.
        """
        sums = torch.zeros_like(self.centroids).index_add_(0, self.label_bank, self.feature_bank)
        counts = torch.bincount(self.label_bank, minlength=self.num_classes)
        chosen = torch.ones(self.num_classes, dtype=torch.bool, device=counts.device)
        if cluster_list is not None:
            chosen = torch.zeros_like(chosen)
            chosen[torch.as_tensor(list(cluster_list), dtype=torch.long, device=counts.device)] = True
        chosen &= counts > 0
        self.centroids[chosen] = sums[chosen] / counts[chosen].unsqueeze(1).to(sums.dtype)
        dist.broadcast(self.centroids, 0)

    @torch.no_grad()
    def set_reweight(self, labels: Any = None, reweight_pow: float = 0.5) -> torch.Tensor:
        """Class weights inversely proportional to cluster size, for a weighted cross-entropy.

        ``w_c = (1 / (n_c + 1e-5)) ** reweight_pow``, normalised to sum to 1, where ``n_c``
        counts ``labels`` (default: the label bank) equal to ``c``. Stored in ``loss_weight``
        and returned (``(num_classes,)``); ODC passes it to its head's criterion.
        """
        if labels is None:
            labels = self.label_bank
        labels = _as_tensor(labels, torch.long, self.loss_weight.device)
        counts = torch.bincount(labels, minlength=self.num_classes).to(torch.float64)
        inverse = (1.0 / (counts + 1e-5)) ** reweight_pow
        self.loss_weight.copy_((inverse / inverse.sum()).to(self.loss_weight.dtype))
        return self.loss_weight.clone()
