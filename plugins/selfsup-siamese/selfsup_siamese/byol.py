"""BYOL: Bootstrap Your Own Latent (Grill et al., NeurIPS 2020; MMSelfSup 0.x ``BYOL``)."""
from __future__ import annotations

from typing import Any, Union

import torch
from selfsup_models.algorithm import BaseAlgorithm, check_views, make_momentum_copy, momentum_update_
from torch import nn

InitCfg = Union[dict, list[dict], None]


class BYOL(BaseAlgorithm):
    """BYOL: the online network predicts the target network's projection of the other view.

    The online network is ``backbone -> neck`` (the projector) followed by the head's
    predictor; the target network is a copy of ``backbone -> neck`` that receives no
    gradient and follows the online weights as an exponential moving average,
    ``target = m * target + (1 - m) * online``, applied by :meth:`momentum_update` after
    every optimizer step. The core's ``MomentumUpdate`` hook (``[[hooks]] type =
    "MomentumUpdate"``) sets ``m`` before every iteration on the paper's cosine schedule,
    from ``base_momentum`` at the first iteration to ``end_momentum = 1`` at the last.

    Loss (the paper's symmetrised normalised MSE): with online projections ``z1, z2`` and
    target projections ``t1, t2`` of the two views,
    ``loss = head(z1, t2) + head(z2, t1)`` where the ``LatentPredictHead`` gives
    ``mean_i || q_i/|q_i| - t_i/|t_i| ||^2 = mean_i (2 - 2 cos(q_i, t_i))`` for the
    prediction ``q = predictor(z)``; it ranges over [0, 8]. The target network runs in
    training mode (its batch norms use the batch statistics; their running statistics are
    its own), as in the paper.

    Args:
        backbone: the online backbone.
        neck: the online projector, e.g. ``NonLinearNeck`` 2048 -> 4096 -> 256 with a hidden
            batch norm (``with_bias = true``, ``with_last_bn = false``).
        head: a ``LatentPredictHead`` whose ``predictor`` is the prediction MLP
            (``NonLinearNeck`` 256 -> 4096 -> 256, ``with_avg_pool = false``).
        base_momentum: the EMA momentum at the first iteration (0.996 in the paper for
            batch 4096; 0.99 in MMSelfSup's 8 x 32 accum 16 recipe).
        init_cfg: initialisation of the whole algorithm, applied before the target copy is
            made (so both networks start equal).

    Attributes:
        momentum: the current EMA momentum (set by the ``MomentumUpdate`` hook; starts at
            ``base_momentum``).
        target_backbone, target_neck: the target network.
    """

    def __init__(self, backbone: nn.Module, neck: nn.Module, head: nn.Module, base_momentum: float = 0.996,
                 init_cfg: InitCfg = None) -> None:
        super().__init__(backbone, neck, head, init_cfg=init_cfg)
        if not 0.0 <= base_momentum <= 1.0:
            raise ValueError(f"BYOL: base_momentum must be in [0, 1], got {base_momentum}")
        self.base_momentum = float(base_momentum)
        self.momentum = float(base_momentum)
        self.init_weights()
        self.target_backbone = make_momentum_copy(self.backbone)
        self.target_neck = make_momentum_copy(self.neck)

    def _online(self) -> nn.ModuleList:
        return nn.ModuleList([self.backbone, self.neck])

    @torch.no_grad()
    def momentum_update(self) -> None:
        """``target = momentum * target + (1 - momentum) * online`` (backbone and projector)."""
        momentum_update_(nn.ModuleList([self.target_backbone, self.target_neck]), self._online(), self.momentum)

    def forward_train(self, img: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        """``img``: two view batches ``[(N, C, H, W)] * 2`` -> ``{"loss": symmetric loss}``."""
        view1, view2 = check_views("BYOL", img, 2)
        online1 = self.neck(self.backbone(view1))[0]
        online2 = self.neck(self.backbone(view2))[0]
        with torch.no_grad():
            target1 = self.target_neck(self.target_backbone(view1))[0]
            target2 = self.target_neck(self.target_backbone(view2))[0]
        loss = self.head(online1, target2)["loss"] + self.head(online2, target1)["loss"]
        return {"loss": loss}


__all__ = ["BYOL"]
