"""MoCo v3: a momentum encoder, a predictor and a symmetric in-batch contrastive loss.

Chen, Xie and He, "An Empirical Study of Training Self-Supervised Vision Transformers", ICCV
2021. Both views go through the base encoder (backbone + projector) and the momentum encoder
(its EMA copy); the head's predictor maps each base projection to a query that must pick the
other view's momentum key out of every key of the global batch (InfoNCE, temperature ``T``,
scaled by ``2T``). No queue: the negatives are the other images of the batch, gathered from
every process. The loss is symmetrised over the two view orders.

The momentum follows a cosine schedule from ``base_momentum`` (0.99) to 1: configure the
core's ``MomentumUpdate`` hook (``[[hooks]] type = "MomentumUpdate"``), which sets
``momentum`` before every iteration and calls :meth:`MoCoV3.momentum_update` after every
optimizer step. For ViTs, MoCo v3's stability trick (a frozen random patch projection) and
fixed sin-cos position embeddings are backbone options: ``stop_grad_conv1 = true``,
``pos_embed_type = "sincos"`` of ``VisionTransformer``. ResNets work unchanged.
"""
from __future__ import annotations

from typing import Any

import torch
from selfsup_models.algorithm import BaseAlgorithm, InitCfg, check_views, make_momentum_copy, momentum_update_
from selfsup_models.init import InitReport
from torch import nn


class MoCoV3(BaseAlgorithm):
    """MoCo v3 (MMSelfSup 0.x ``MoCoV3``).

    Args:
        backbone: the built backbone: a ``VisionTransformer`` (``arch = "mocov3-small"``,
            ``stop_grad_conv1 = true``) or a ResNet.
        neck: the projector, a ``NonLinearNeck`` (3 layers for ViT with ``vit_backbone =
            true``, 2 for ResNet; ``with_last_bn_affine = false``).
        head: ``MoCoV3Head`` with its ``predictor`` (a 2-layer ``NonLinearNeck``) and
            ``temperature`` (0.2 for ViT, 1.0 for ResNet in the paper).
        base_momentum: the momentum at the start of training; the ``MomentumUpdate`` hook
            raises it to ``end_momentum`` (1.0) with a cosine schedule.
        init_cfg: initialisation applied to the base encoder and head; the momentum encoder
            is then copied from the base encoder.

    Modules: ``backbone`` and ``neck`` (base encoder), ``momentum_encoder``
    (``Sequential(backbone, neck)`` copy, no gradients), ``head``.
    ``forward_train(img=[view_1, view_2])`` returns
    ``{"loss": head(q_1, k_2) + head(q_2, k_1)}``.
    """

    def __init__(self, backbone: nn.Module, neck: nn.Module, head: nn.Module, base_momentum: float = 0.99,
                 init_cfg: InitCfg = None) -> None:
        super().__init__(backbone, neck, head, init_cfg=init_cfg)
        if neck is None or head is None:
            raise ValueError("MoCoV3: needs a [model.neck] (NonLinearNeck projector) and a [model.head] (MoCoV3Head)")
        if not 0.0 <= base_momentum <= 1.0:
            raise ValueError(f"MoCoV3: base_momentum must be in [0, 1], got {base_momentum}")
        self.base_momentum = float(base_momentum)
        self.momentum = float(base_momentum)
        self.init_weights()
        self.momentum_encoder = make_momentum_copy(nn.Sequential(self.backbone, self.neck))

    def init_weights(self) -> InitReport:
        report = super().init_weights()
        if "momentum_encoder" in self._modules:  # re-initialised later: the momentum encoder follows
            with torch.no_grad():
                for target, online in zip(self.momentum_encoder.parameters(), self.base_encoder().parameters()):
                    target.copy_(online)
        return report

    def base_encoder(self) -> nn.Sequential:
        """``Sequential(backbone, neck)`` (a view; not a registered module)."""
        return nn.Sequential(self.backbone, self.neck)

    @torch.no_grad()
    def momentum_update(self) -> None:
        """``target = momentum * target + (1 - momentum) * base`` (called by the MomentumUpdate hook)."""
        momentum_update_(self.momentum_encoder, self.base_encoder(), self.momentum)

    def forward_train(self, img: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        view_1, view_2 = check_views("MoCoV3", img, 2)
        q_1 = self.neck(self.backbone(view_1))[0]
        q_2 = self.neck(self.backbone(view_2))[0]
        with torch.no_grad():
            k_1 = self.momentum_encoder(view_1)[0]
            k_2 = self.momentum_encoder(view_2)[0]
        loss = self.head(q_1, k_2)["loss"] + self.head(q_2, k_1)["loss"]
        return {"loss": loss}


__all__ = ["MoCoV3"]
