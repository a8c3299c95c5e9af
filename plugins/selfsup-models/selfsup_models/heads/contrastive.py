"""ContrastiveHead: InfoNCE over one positive and K negatives per sample."""
from __future__ import annotations

from typing import Union

import torch
import torch.nn.functional as F

from ..init import BaseModule

InitCfg = Union[dict, list[dict], None]


class ContrastiveHead(BaseModule):
    """Cross-entropy over ``[pos, neg] / temperature`` with the positive at index 0.

    Used by MoCo, SimCLR, NPID and DenseCL: the algorithm computes the similarities, this
    head turns them into the InfoNCE loss
    ``mean_i( -log( exp(pos_i/T) / (exp(pos_i/T) + sum_k exp(neg_ik/T)) ) )``.

    Args:
        temperature: the softmax temperature ``T`` (> 0).
        init_cfg: accepted for uniformity (the head has no weights).

    ``forward(pos (N, 1), neg (N, K)) -> {"loss": scalar}``.
    """

    def __init__(self, temperature: float = 0.1, init_cfg: InitCfg = None) -> None:
        super().__init__(init_cfg)
        if temperature <= 0:
            raise ValueError(f"ContrastiveHead: temperature must be > 0, got {temperature}")
        self.temperature = temperature
        self.init_weights()

    def forward(self, pos: torch.Tensor, neg: torch.Tensor) -> dict[str, torch.Tensor]:
        if pos.dim() == 1:
            pos = pos.unsqueeze(1)
        if pos.dim() != 2 or pos.size(1) != 1 or neg.dim() != 2 or neg.size(0) != pos.size(0):
            raise ValueError(
                f"ContrastiveHead expects pos (N, 1) and neg (N, K), got {tuple(pos.shape)} and {tuple(neg.shape)}"
            )
        logits = torch.cat((pos, neg), dim=1) / self.temperature
        labels = torch.zeros(logits.size(0), dtype=torch.long, device=logits.device)
        return {"loss": F.cross_entropy(logits, labels)}
