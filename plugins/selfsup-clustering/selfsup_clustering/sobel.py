"""The fixed Sobel input layer of DeepCluster and ODC (``with_sobel = true``)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Sobel(nn.Module):
    """Grey-scale conversion then the two 3x3 Sobel filters, fixed (not trained).

    ``(N, C, H, W) -> (N, 2, H, W)``: the channel mean (MMSelfSup's 1x1 conv with weights
    1/3 for RGB; the identity for one channel), then horizontal ``[[1, 0, -1], [2, 0, -2],
    [1, 0, -1]]`` and vertical ``[[1, 2, 1], [0, 0, 0], [-1, -2, -1]]`` gradients with
    padding 1 (cross-correlation, as ``nn.Conv2d``). The backbone then takes
    ``in_channels = 2``. The filters are non-persistent buffers: not parameters, not in
    checkpoints.
    """

    def __init__(self) -> None:
        super().__init__()
        kernel = torch.tensor([[[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]],
                               [[1.0, 2.0, 1.0], [0.0, 0.0, 0.0], [-1.0, -2.0, -1.0]]])
        self.register_buffer("kernel", kernel.unsqueeze(1), persistent=False)  # (2, 1, 3, 3)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        grey = img.mean(dim=1, keepdim=True)
        return F.conv2d(grey, self.kernel.to(grey.dtype), padding=1)


__all__ = ["Sobel"]
