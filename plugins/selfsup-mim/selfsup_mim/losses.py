"""The MAE and SimMIM reconstruction losses as modules for a plain PyTorch loop (the heads'
maths, :mod:`selfsup_mim.heads`). Every ``forward`` returns a scalar tensor."""
from __future__ import annotations

import torch
from torch import nn

from .heads import MAEPretrainHead, SimMIMHead


class MAEPixelLoss(nn.Module):
    """``forward(img (N, C, H, W), pred (N, L, p*p*C), mask (N, L))``: mean squared error per
    patch averaged over the masked patches (``mask`` 1 = removed); ``norm_pix`` normalises each
    target patch first (the MAE paper's ``norm_pix_loss``)."""

    def __init__(self, patch_size: int = 16, norm_pix: bool = False) -> None:
        super().__init__()
        self.head = MAEPretrainHead(norm_pix=norm_pix, patch_size=patch_size)

    def forward(self, img: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.head(img, pred, mask)["loss"]


class SimMIMLoss(nn.Module):
    """SimMIM's L1 over masked pixels: ``forward(img, pred, mask)`` as ``SimMIMHead``."""

    def __init__(self, patch_size: int = 4, encoder_in_channels: int = 3) -> None:
        super().__init__()
        self.head = SimMIMHead(patch_size=patch_size, encoder_in_channels=encoder_in_channels)

    def forward(self, img: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.head(img, pred, mask)["loss"]


__all__ = ["MAEPixelLoss", "SimMIMLoss"]
