"""SimCLR's NT-Xent and MoCo's InfoNCE as modules for a plain PyTorch loop.

Both compute their similarity logits with the functions the algorithms use
(:func:`selfsup_contrastive.simclr.nt_xent_logits`, :func:`selfsup_contrastive.moco.moco_logits`)
and the cross-entropy with ``ContrastiveHead``, so a loop built from them computes exactly
what ``selfsup-run`` computes. Every ``forward`` returns a scalar tensor.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from selfsup_models.heads import ContrastiveHead
from torch import nn

from .moco import moco_logits
from .simclr import nt_xent_logits


class NTXentLoss(nn.Module):
    """SimCLR's NT-Xent (normalised temperature-scaled cross-entropy).

    ``forward(z1 (N, D), z2 (N, D))``: the projections of the first and second views of the
    same ``N`` images (normalised here); each embedding must pick its partner out of the
    ``2N - 1`` others. One process only (the trainer gathers across processes)."""

    def __init__(self, temperature: float = 0.1) -> None:
        super().__init__()
        self.head = ContrastiveHead(temperature=temperature)

    def forward(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        z = torch.cat((z1, z2), dim=0)
        pos, neg = nt_xent_logits(z, z)
        return self.head(pos, neg)["loss"]


class InfoNCELoss(nn.Module):
    """MoCo's InfoNCE: ``forward(q (N, C), k (N, C), queue (C, K))``; ``q`` and ``k`` are
    normalised here, ``queue`` holds ``K`` earlier unit-norm keys as columns (no gradient
    through ``k`` or the queue). Without a queue (``queue=None``) the other keys of the batch
    are the negatives."""

    def __init__(self, temperature: float = 0.2) -> None:
        super().__init__()
        self.head = ContrastiveHead(temperature=temperature)

    def forward(self, q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor | None = None) -> torch.Tensor:
        q = F.normalize(q, dim=1)
        k = F.normalize(k, dim=1)
        if queue is None:
            sim = q @ k.detach().T
            eye = torch.eye(q.size(0), dtype=torch.bool, device=q.device)
            pos = sim.diagonal().unsqueeze(1)
            neg = sim.masked_select(~eye).view(q.size(0), -1)
        else:
            pos, neg = moco_logits(q, k, queue)
        return self.head(pos, neg)["loss"]


__all__ = ["InfoNCELoss", "NTXentLoss"]
