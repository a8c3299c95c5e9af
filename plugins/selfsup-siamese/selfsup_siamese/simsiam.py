"""SimSiam: Exploring Simple Siamese Representation Learning (Chen & He, CVPR 2021;
MMSelfSup 0.x ``SimSiam``)."""
from __future__ import annotations

from typing import Any, Union

import torch
from selfsup_models.algorithm import BaseAlgorithm, check_views
from torch import nn

InitCfg = Union[dict, list[dict], None]


class SimSiam(BaseAlgorithm):
    """SimSiam: one encoder (``backbone -> neck``) for both views, a predictor, and a
    stop-gradient on the other view's projection instead of a momentum encoder.

    With projections ``z1, z2`` and predictions ``p = predictor(z)``, the loss is the paper's
    ``D(p1, stopgrad(z2)) / 2 + D(p2, stopgrad(z1)) / 2`` with ``D(p, z) = -cos(p, z)``
    (batch mean), in [-1, 1]. The ``LatentPredictHead`` gives ``h = mean(2 - 2 cos)`` per
    pair with the target detached, so ``loss = (h(z1, z2) + h(z2, z1)) / 4 - 1``: the
    paper's value and gradient exactly.

    The paper keeps the predictor's learning rate fixed (``fix_pred_lr``) while the rest
    follows the cosine schedule: give the predictor param groups of their own with
    ``[optimizer.paramwise_options] "head\\.predictor" = {fix_lr = true}`` and add the
    ``SimSiamHook`` trainer hook.

    Args:
        backbone: the backbone (``zero_init_residual = true`` in the paper's ResNet-50).
        neck: the projection MLP, e.g. ``NonLinearNeck`` 2048 -> 2048 -> 2048 -> 2048,
            ``num_layers = 3``, batch norm on every layer, ``with_last_bn_affine = false``.
        head: a ``LatentPredictHead`` whose ``predictor`` is the bottleneck MLP
            (``NonLinearNeck`` 2048 -> 512 -> 2048, ``with_last_bn = false``,
            ``with_last_bias = true``, ``with_avg_pool = false``).
        init_cfg: initialisation of the whole algorithm.
    """

    def __init__(self, backbone: nn.Module, neck: nn.Module, head: nn.Module, init_cfg: InitCfg = None) -> None:
        super().__init__(backbone, neck, head, init_cfg=init_cfg)
        self.init_weights()

    def forward_train(self, img: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        """``img``: two view batches ``[(N, C, H, W)] * 2`` -> ``{"loss": -mean cos}``."""
        view1, view2 = check_views("SimSiam", img, 2)
        z1 = self.neck(self.backbone(view1))[0]
        z2 = self.neck(self.backbone(view2))[0]
        # the head detaches its target: the stop-gradient
        loss = (self.head(z1, z2)["loss"] + self.head(z2, z1)["loss"]) / 4 - 1
        return {"loss": loss}


__all__ = ["SimSiam"]
