"""Evaluate a backbone that no pre-training produced: ``Extractor`` and ``RawPixels``.

``Extractor`` is an algorithm with nothing to train: a backbone (and optionally a neck)
whose ``mode="extract"`` outputs the evaluators score. With ``init_cfg`` Pretrained weights
it evaluates any checkpoint (torchvision, timm, another framework's) under the same
protocol as our own runs; with the ``RawPixels`` backbone it gives the reference every
learned representation has to beat::

    [model]
    type = "Extractor"
    backbone = { type = "RawPixels" }
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from selfsup_core.api import SelfSupError


class RawPixels(nn.Module):
    """The identity "backbone": each image flattened to one vector ``(N, C*H*W)``."""

    def __init__(self) -> None:
        super().__init__()
        self.out_channels: int | None = None  # depends on the image size

    def forward(self, img: torch.Tensor) -> tuple[torch.Tensor]:
        return (img.flatten(1),)


class Extractor(nn.Module):
    """A backbone (and optional neck) to evaluate, not to train.

    Args:
        backbone: any backbone (built from its table by selfsup).
        neck: optional; when given, ``mode="extract"`` returns the neck's outputs.
    """

    def __init__(self, backbone: nn.Module, neck: nn.Module | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.neck = neck

    def extract_feat(self, img: torch.Tensor) -> Any:
        """The backbone's outputs (through the neck when there is one)."""
        features = self.backbone(img)
        return self.neck(features) if self.neck is not None else features

    def forward(self, img: torch.Tensor, mode: str = "extract") -> Any:
        if mode == "extract":
            return self.extract_feat(img)
        raise SelfSupError(
            f"Extractor only extracts features (mode='extract'), got mode={mode!r}: it has no loss to train; "
            "use it with selfsup-run eval / tsne, or pick a pre-training algorithm in [model]")


__all__ = ["Extractor", "RawPixels"]
