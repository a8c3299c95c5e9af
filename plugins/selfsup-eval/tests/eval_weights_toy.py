"""A toy algorithm whose ``backbone`` takes an ``init_cfg`` (``Pretrained`` included), for the
loaded-weights tests (``type = "eval_weights_toy:PretrainedToy"``)."""
from __future__ import annotations

import torch
from torch import nn

from selfsup_models.init import BaseModule


class ToyBackbone(BaseModule):
    def __init__(self, dim: int = 8, init_cfg=None) -> None:
        super().__init__(init_cfg)
        self.net = nn.Sequential(nn.Linear(dim, 16), nn.ReLU(), nn.Linear(16, dim))
        self.init_weights()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class PretrainedToy(nn.Module):
    def __init__(self, dim: int = 8, init_cfg=None) -> None:
        super().__init__()
        self.backbone = ToyBackbone(dim, init_cfg)

    def forward(self, img: torch.Tensor, mode: str = "train", idx=None):
        out = self.backbone(img)
        return out if mode == "extract" else {"loss": out.square().mean()}
