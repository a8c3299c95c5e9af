"""Losses as plain modules for a hand-written PyTorch loop, computed by the registered heads.

Each class is a thin front for the head the algorithms use (no second copy of the maths):

- :class:`NegativeCosineLoss` (BYOL, SimSiam): ``mean(2 - 2 cos(p, t))`` with a stop-gradient on
  the target; the predictor MLP is yours to apply first (``LatentPredictHead`` without it).
- :class:`BarlowTwinsLoss`: the cross-correlation loss (``LatentCrossCorrelationHead``).
- :class:`SwAVLoss`: swapped prediction with Sinkhorn codes, prototypes inside (``SwAVHead``).
- :class:`ContrastiveLoss`: cross-entropy over ``[pos, neg] / T`` (``ContrastiveHead``).

NT-Xent (SimCLR) and InfoNCE (MoCo) are in :mod:`selfsup_contrastive.losses`, the MAE pixel
loss in :mod:`selfsup_mim.losses`. Every ``forward`` returns a scalar tensor.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .heads import ContrastiveHead, LatentCrossCorrelationHead, LatentPredictHead, SwAVHead


class _ListIdentity(nn.Module):
    """A predictor that returns its input list unchanged (necks take and return lists)."""

    def forward(self, x: Sequence[torch.Tensor]) -> Sequence[torch.Tensor]:
        return x


class NegativeCosineLoss(nn.Module):
    """BYOL/SimSiam: ``mean_i (2 - 2 cos(prediction_i, target_i))``; ``target`` is detached.

    ``forward(prediction (N, D), target (N, D))``; symmetrise by calling it twice with the views
    swapped, as BYOL does."""

    def __init__(self) -> None:
        super().__init__()
        self.head = LatentPredictHead(predictor=_ListIdentity())

    def forward(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.head(prediction, target)["loss"]


class BarlowTwinsLoss(nn.Module):
    """Barlow Twins: ``forward(z1 (N, D), z2 (N, D))`` with ``in_channels = D`` and the
    off-diagonal weight ``lambd``."""

    def __init__(self, in_channels: int, lambd: float = 0.0051) -> None:
        super().__init__()
        self.head = LatentCrossCorrelationHead(in_channels=in_channels, lambd=lambd)

    def forward(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        return self.head(z1, z2)["loss"]


class SwAVLoss(nn.Module):
    """SwAV: ``forward(z)`` with ``z`` the L2-normalised projections of every crop stacked
    crop-major (``sum(num_crops) * N`` rows). Holds the learnable prototypes
    (``num_prototypes x feat_dim``); add this module's parameters to the optimizer."""

    def __init__(self, feat_dim: int, num_crops: Sequence[int] = (2,), num_prototypes: int = 3000,
                 temperature: float = 0.1, epsilon: float = 0.05, sinkhorn_iterations: int = 3,
                 crops_for_assign: Sequence[int] = (0, 1)) -> None:
        super().__init__()
        self.head = SwAVHead(feat_dim=feat_dim, num_crops=num_crops, num_prototypes=num_prototypes,
                             temperature=temperature, epsilon=epsilon, sinkhorn_iterations=sinkhorn_iterations,
                             crops_for_assign=crops_for_assign)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.head(z)["loss"]


class ContrastiveLoss(nn.Module):
    """``forward(pos (N, 1), neg (N, K))``: cross-entropy with the positive at index 0 of
    ``[pos, neg] / temperature``."""

    def __init__(self, temperature: float = 0.1) -> None:
        super().__init__()
        self.head = ContrastiveHead(temperature=temperature)

    def forward(self, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        return self.head(pos, neg)["loss"]


__all__ = ["BarlowTwinsLoss", "ContrastiveLoss", "NegativeCosineLoss", "SwAVLoss"]
