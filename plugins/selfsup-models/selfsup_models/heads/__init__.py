"""Heads: losses on top of necks (MMSelfSup 0.x names and arguments).

Heads return ``{"loss": ...}`` from ``forward``; the classification heads return scores from
``forward`` and the loss dict from ``loss(scores, labels)``.
"""
from __future__ import annotations

from .cls import ClsHead, MultiClsHead, accuracy
from .contrastive import ContrastiveHead
from .latent import LatentClsHead, LatentCrossCorrelationHead, LatentPredictHead, off_diagonal
from .mocov3 import MoCoV3Head
from .swav import SwAVHead, sinkhorn

__all__ = [
    "ClsHead",
    "ContrastiveHead",
    "LatentClsHead",
    "LatentCrossCorrelationHead",
    "LatentPredictHead",
    "MoCoV3Head",
    "MultiClsHead",
    "SwAVHead",
    "accuracy",
    "off_diagonal",
    "sinkhorn",
]
