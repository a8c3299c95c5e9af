"""Components for the trainer benchmark, used through import-path types
(``type = "_bench_components:BenchAlgorithm"``)."""
from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn


class BenchDataset:
    """``length`` random images held in memory; each draw adds small noise (float) or returns
    the stored uint8 image (``uint8=True``, the GPU-augmentation setting)."""

    def __init__(self, length: int = 4096, size: int = 32, channels: int = 3, uint8: bool = False) -> None:
        generator = torch.Generator().manual_seed(0)
        self.uint8 = uint8
        count = min(length, 256)  # a small pool, indexed modulo: memory stays small at 224 px
        self.pool = torch.randint(0, 256, (count, channels, size, size), dtype=torch.uint8, generator=generator)
        self.length = length
        self.device_transform = _ToFloat() if uint8 else None

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, Any]:
        img = self.pool[index % len(self.pool)]
        if not self.uint8:
            img = img.float().div_(255).add_(torch.randn(img.shape).mul_(0.01))
        return {"img": img}


class _ToFloat(nn.Module):
    def forward(self, batch: dict[str, Any]) -> dict[str, Any]:
        batch["img"] = batch["img"].float().div_(255)
        return batch


def _small(width: int) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
        nn.Conv2d(width, width * 2, 3, stride=2, padding=1), nn.BatchNorm2d(width * 2), nn.ReLU(inplace=True),
        nn.Conv2d(width * 2, width * 4, 3, stride=2, padding=1), nn.BatchNorm2d(width * 4), nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width * 4, 128),
    )


class BenchAlgorithm(nn.Module):
    """A backbone and a projection; the loss pulls embeddings towards a fixed target."""

    def __init__(self, arch: str = "small", width: int = 32) -> None:
        super().__init__()
        if arch == "resnet50":
            import torchvision

            self.backbone = torchvision.models.resnet50(num_classes=128)
        else:
            self.backbone = _small(width)

    def forward(self, img: torch.Tensor, mode: str = "train") -> dict[str, torch.Tensor]:
        z = self.backbone(img).float()
        return {"loss": (z - 1).pow(2).mean()}


class Stopwatch:
    """A trainer hook timing iterations after ``skip`` warm-up ones (synchronising CUDA at
    both ends only)."""

    def __init__(self, skip: int = 10) -> None:
        self.skip = skip
        self.start: float | None = None
        self.end: float | None = None
        self.count = 0

    @staticmethod
    def _sync(runner: Any) -> None:
        if runner.device.type == "cuda":
            torch.cuda.synchronize()

    def selfsup_before_iter(self, runner: Any) -> None:
        if runner.inner_iter == self.skip:
            self._sync(runner)
            self.start = time.perf_counter()

    def selfsup_after_epoch(self, runner: Any) -> None:
        self._sync(runner)
        self.end = time.perf_counter()
        self.count = runner.iters_per_epoch - self.skip

    def seconds_per_iter(self) -> float:
        assert self.start is not None and self.end is not None
        return (self.end - self.start) / self.count
