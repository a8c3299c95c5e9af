"""A tiny trainable algorithm for the end-to-end tests (used as ``type = "eval_toy:TinyAlgo"``;
the tests put this folder on PYTHONPATH)."""
from __future__ import annotations

import torch
from torch import nn


class TinyAlgo(nn.Module):
    """conv-BN-ReLU-pool backbone; loss: the backbone's features should reconstruct the
    image's mean intensity per row (a stand-in for a real self-supervised loss)."""

    def __init__(self, size: int = 16) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.decoder = nn.Linear(8, size)

    def forward(self, img: torch.Tensor, mode: str = "train") -> object:
        features = self.backbone(img)
        if mode == "extract":
            return (features,)
        rows = img.mean(dim=(1, 3))
        return {"loss": ((self.decoder(features.mean(dim=(2, 3))) - rows) ** 2).mean()}
