"""Toys for the scaling tests (tests/engine/test_scaling.py), used through import-path types."""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn


class ToyBlocks(nn.Module):
    """A stack of linear blocks in an ``nn.ModuleList``; loss = MSE to the reversed input."""

    def __init__(self, dim: int = 8, hidden: int = 16, depth: int = 2) -> None:
        super().__init__()
        sizes = [dim] + [hidden] * (depth - 1) + [dim]
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(a, b), nn.Tanh()) for a, b in zip(sizes, sizes[1:]))
        self.head = nn.Linear(dim, dim)

    def forward(self, img: torch.Tensor, mode: str = "train") -> dict | torch.Tensor:
        out = img
        for block in self.blocks:
            out = block(out)
        out = self.head(out)
        if mode == "extract":
            return out
        return {"loss": ((out - img.flip(-1)) ** 2).mean()}


class ExitOnce:
    """A trainer hook that ends process ``rank`` with ``os._exit(1)`` after iteration ``at``,
    once: ``marker`` is written first, and a process that finds it carries on (the restart)."""

    def __init__(self, at: int = 3, rank: int = 1, marker: str = "exited") -> None:
        self.at, self.rank, self.marker = at, rank, Path(marker)

    def selfsup_after_iter(self, runner, outputs) -> None:
        if runner.rank == self.rank and runner.iter == self.at and not self.marker.exists():
            self.marker.write_text(str(os.getpid()))
            os._exit(1)
