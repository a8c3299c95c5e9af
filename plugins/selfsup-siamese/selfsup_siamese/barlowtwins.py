"""Barlow Twins: Self-Supervised Learning via Redundancy Reduction (Zbontar et al., ICML 2021;
MMSelfSup 0.x ``BarlowTwins``)."""
from __future__ import annotations

from typing import Any, Union

import torch
from selfsup_models.algorithm import BaseAlgorithm, check_views
from torch import nn

InitCfg = Union[dict, list[dict], None]


class BarlowTwins(BaseAlgorithm):
    """Barlow Twins: the cross-correlation matrix of two views' projections, over the batch,
    is pushed towards the identity.

    Both views go through the same ``backbone -> neck`` (the projector); the head, a
    ``LatentCrossCorrelationHead``, standardises each projection dimension over the batch
    and computes ``c = z1n^T z2n / N`` summed over all processes (so ``N`` is the global
    batch), then ``loss = sum_i (1 - c_ii)^2 + lambd * sum_{i != j} c_ij^2``.

    Args:
        backbone: the backbone (``zero_init_residual = true`` in MMSelfSup's ResNet-50).
        neck: the projector, e.g. ``NonLinearNeck`` 2048 -> 8192 -> 8192 -> 8192,
            ``num_layers = 3``, batch norm and ReLU after the first two layers, none after
            the last (``with_last_bn = false``).
        head: ``LatentCrossCorrelationHead`` with ``in_channels`` = the projector's output
            width and ``lambd`` (0.0051 in the paper).
        init_cfg: initialisation of the whole algorithm.
    """

    def __init__(self, backbone: nn.Module, neck: nn.Module, head: nn.Module, init_cfg: InitCfg = None) -> None:
        super().__init__(backbone, neck, head, init_cfg=init_cfg)
        self.init_weights()

    def forward_train(self, img: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        """``img``: two view batches ``[(N, C, H, W)] * 2`` -> ``{"loss": Barlow Twins loss}``."""
        view1, view2 = check_views("BarlowTwins", img, 2)
        z1 = self.neck(self.backbone(view1))[0]
        z2 = self.neck(self.backbone(view2))[0]
        return {"loss": self.head(z1, z2)["loss"]}


__all__ = ["BarlowTwins"]
