"""DeepCluster (Caron et al., "Deep Clustering for Unsupervised Learning of Visual Features",
ECCV 2018): classify every image into the k-means cluster of its features.

The :class:`~selfsup_clustering.deepcluster_hook.DeepClusterHook` clusters the features of
the whole dataset before the first epoch and after every epoch and writes the clusters into
the ``DeepClusterDataset``'s ``pseudo_label``; the algorithm trains backbone + neck + a
``ClsHead`` on those labels with cross-entropy.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Union

import torch
from selfsup_models.algorithm import BaseAlgorithm
from torch import nn

from .sobel import Sobel

InitCfg = Union[Mapping[str, Any], Sequence[Mapping[str, Any]], None]


def last_feature(x: Any) -> torch.Tensor:
    """The last tensor of nested tuples/lists (a backbone's or neck's outputs)."""
    while isinstance(x, (list, tuple)):
        x = x[-1]
    return x


class ClusteringAlgorithm(BaseAlgorithm):
    """What DeepCluster and ODC share: the optional Sobel input layer, the class weights
    of the head's cross-entropy, and the features that are clustered.

    The head's ``criterion`` is a ``CrossEntropyLoss`` whose ``weight`` buffer
    (:attr:`loss_weight`, ``(num_classes,)``, state-dict key ``head.criterion.weight``)
    starts uniform (the plain mean cross-entropy) and is overwritten in place by
    :meth:`set_reweight`, so the state dict has the same keys before and after re-weighting.
    """

    def __init__(self, backbone: nn.Module, neck: nn.Module | None, head: nn.Module, with_sobel: bool,
                 init_cfg: InitCfg) -> None:
        super().__init__(backbone, neck, head, init_cfg=init_cfg)
        owner = type(self).__name__
        self.with_sobel = bool(with_sobel)
        self.sobel_layer = Sobel() if self.with_sobel else None
        num_classes = getattr(head, "num_classes", None)
        if not isinstance(num_classes, int) or not hasattr(head, "criterion") or not hasattr(head, "loss"):
            raise ValueError(f"{owner}: the head must be a classification head with num_classes, criterion and "
                             f"loss() (ClsHead), got {type(head).__name__}")
        self.num_classes = num_classes
        head.criterion = nn.CrossEntropyLoss(weight=torch.full((num_classes,), 1.0 / num_classes))

    @property
    def loss_weight(self) -> torch.Tensor:
        """The class weights of the head's cross-entropy (its ``criterion.weight`` buffer)."""
        return self.head.criterion.weight

    def extract_feat(self, img: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The backbone's outputs for ``img`` (after the Sobel layer when ``with_sobel``)."""
        if self.sobel_layer is not None:
            img = self.sobel_layer(img)
        return self.backbone(img)

    def clustering_features(self, img: torch.Tensor) -> torch.Tensor:
        """``(N, D)`` features that are clustered: the neck's output on the backbone's last
        map (MMSelfSup's extractor), or the average-pooled last map without a neck."""
        feat = self.extract_feat(img)
        if self.neck is not None:
            out = last_feature(self.neck([last_feature(feat)]))
        else:
            out = last_feature(feat)
            if out.dim() == 4:
                out = out.mean(dim=(2, 3))
        return out.reshape(out.shape[0], -1)

    @torch.no_grad()
    def set_reweight(self, labels: torch.Tensor, reweight_pow: float = 0.5, eps: float = 1e-10) -> None:
        """Class weights inversely proportional to cluster size:
        ``w_c = (1 / (n_c + eps)) ** reweight_pow``, normalised to sum to 1."""
        labels = torch.as_tensor(labels).reshape(-1).long().to(self.loss_weight.device)
        counts = torch.bincount(labels, minlength=self.num_classes).double()
        inverse = (1.0 / (counts + eps)) ** reweight_pow
        self.loss_weight.copy_(inverse / inverse.sum())


class DeepCluster(ClusteringAlgorithm):
    """DeepCluster: ``[Sobel] -> backbone -> neck -> ClsHead`` trained on k-means pseudo-labels.

    Args:
        backbone: e.g. ResNet-50 with ``in_channels = 2`` when ``with_sobel``.
        with_sobel: a fixed grey-scale + Sobel layer in front of the backbone (paper: yes).
        neck: e.g. ``AvgPool2dNeck`` (its output is both classified and clustered).
        head: a ``ClsHead`` with ``num_classes`` = the number of clusters.
        init_cfg: initialisation of the whole algorithm after the components' own.

    ``forward_train(img (N, C, H, W), pseudo_label (N,)) -> {"loss", "acc"}``; the labels
    come from the ``DeepClusterDataset`` that the ``DeepClusterHook`` fills.
    """

    def __init__(self, backbone: nn.Module, with_sobel: bool = True, neck: nn.Module | None = None,
                 head: nn.Module | None = None, init_cfg: InitCfg = None) -> None:
        if head is None:
            raise ValueError("DeepCluster: a head is required (model.head = {type = 'ClsHead', num_classes = K})")
        super().__init__(backbone, neck, head, with_sobel, init_cfg)
        self.init_weights()

    def forward_train(self, img: torch.Tensor, pseudo_label: torch.Tensor | None = None, **kwargs: Any
                      ) -> dict[str, torch.Tensor]:
        if pseudo_label is None:
            raise ValueError("DeepCluster: the batch has no pseudo_label; use data.train.type = 'DeepClusterDataset'")
        if isinstance(img, (list, tuple)):
            img = img[0]
        x = self.extract_feat(img)
        if self.neck is not None:
            x = self.neck(x)
        return self.head.loss(self.head(x), pseudo_label.long())

    def forward_test(self, img: torch.Tensor, **kwargs: Any) -> dict[str, torch.Tensor]:
        x = self.extract_feat(img)
        if self.neck is not None:
            x = self.neck(x)
        return {f"head{i}": out for i, out in enumerate(self.head(x))}


__all__ = ["ClusteringAlgorithm", "DeepCluster", "last_feature"]
