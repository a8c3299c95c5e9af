"""Toys for the fsdp2 tests, used through import-path types (``type = "fsdp_toy:ToyBlocks"``);
conftest.py puts this folder on sys.path and subprocesses get it on PYTHONPATH."""
from __future__ import annotations

import copy

import torch
from torch import nn


class ToyDataset:
    """``length`` fixed random vectors; each draw adds torch-RNG noise (an "augmentation")."""

    def __init__(self, length: int = 16, dim: int = 8, noise: float = 0.1, seed: int = 0) -> None:
        self.data = torch.randn(length, dim, generator=torch.Generator().manual_seed(seed))
        self.noise = noise

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> dict:
        return {"img": self.data[index] + self.noise * torch.randn(self.data.shape[1]), "idx": index}


class ToyBlocks(nn.Module):
    """A stack of linear blocks in an ``nn.ModuleList`` (fsdp2's sharding units); loss = MSE to
    the reversed input. Reads no parameter outside its blocks' forward, so it shards."""

    def __init__(self, dim: int = 8, hidden: int = 16, depth: int = 2) -> None:
        super().__init__()
        sizes = [dim] + [hidden] * (depth - 1) + [dim]
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(a, b), nn.Tanh()) for a, b in zip(sizes, sizes[1:]))
        self.head = nn.Linear(dim, dim)

    def forward(self, img: torch.Tensor, mode: str = "train", idx: torch.Tensor | None = None) -> dict | torch.Tensor:
        out = img
        for block in self.blocks:
            out = block(out)
        out = self.head(out)
        if mode == "extract":
            return out
        return {"loss": ((out - img.flip(-1)) ** 2).mean()}


class ToyEMA(nn.Module):
    """An online linear layer and a momentum copy updated by ``momentum_update`` (refused by fsdp2)."""

    def __init__(self, dim: int = 8) -> None:
        super().__init__()
        self.online = nn.Linear(dim, dim)
        self.target = copy.deepcopy(self.online).requires_grad_(False)

    @torch.no_grad()
    def momentum_update(self) -> None:
        for t, o in zip(self.target.parameters(), self.online.parameters()):
            t.mul_(0.9).add_(o, alpha=0.1)

    def forward(self, img: torch.Tensor, mode: str = "train", idx: torch.Tensor | None = None) -> dict:
        return {"loss": ((self.online(img) - self.target(img) - 1) ** 2).mean()}
