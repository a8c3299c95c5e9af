"""Tiny algorithm and dataset for trainer tests, used through import-path types
(``type = "selfsup_toy:ToyAlgorithm"``); the tests put this folder on sys.path/PYTHONPATH."""
from __future__ import annotations

import copy
import os
import time

import torch
from torch import nn


class ToyDataset:
    """``length`` fixed random vectors; each draw adds torch-RNG noise (an "augmentation")."""

    def __init__(self, length: int = 64, dim: int = 8, noise: float = 0.1, seed: int = 0, delay: float = 0.0) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.data = torch.randn(length, dim, generator=generator)
        self.noise = noise
        self.delay = delay

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> dict:
        if self.delay:
            time.sleep(self.delay)
        img = self.data[index] + self.noise * torch.randn(self.data.shape[1])
        return {"img": img, "label": index % 2, "idx": index}


class ToyAlgorithm(nn.Module):
    """Two linear layers with dropout; loss = MSE to the reversed input + a tiny L2 term.

    ``nan_at_call``: the loss becomes NaN from that forward call on (1-based; 0 = never).
    A ``seen`` buffer counts samples (algorithm state that must survive checkpoints).
    """

    def __init__(self, dim: int = 8, hidden: int = 16, dropout: float = 0.1, nan_at_call: int = 0) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, dim))
        self.register_buffer("seen", torch.zeros((), dtype=torch.long))
        self.nan_at_call = nan_at_call
        self.calls = 0

    def forward(self, img: torch.Tensor, mode: str = "train", idx: torch.Tensor | None = None) -> dict:
        if mode == "extract":
            return self.net(img)
        self.calls += 1
        self.seen += img.shape[0]
        out = self.net(img)
        loss = ((out - img.flip(-1)) ** 2).mean()
        if self.nan_at_call and self.calls >= self.nan_at_call:
            loss = loss * float("nan")
        return {"loss_mse": loss, "loss_l2": 1e-3 * sum((p**2).sum() for p in self.net.parameters())}


class ToyEMA(nn.Module):
    """An online linear layer and a momentum copy, for MomentumUpdate tests."""

    def __init__(self, dim: int = 8, base_momentum: float = 0.9) -> None:
        super().__init__()
        self.online = nn.Linear(dim, dim)
        self.target = copy.deepcopy(self.online)
        for p in self.target.parameters():
            p.requires_grad = False
        self.base_momentum = base_momentum
        self.momentum = base_momentum
        self.history: list[float] = []

    @torch.no_grad()
    def momentum_update(self) -> None:
        self.history.append(self.momentum)
        for t, o in zip(self.target.parameters(), self.online.parameters()):
            t.mul_(self.momentum).add_(o, alpha=1 - self.momentum)

    def forward(self, img: torch.Tensor, mode: str = "train") -> dict:
        return {"loss": ((self.online(img) - self.target(img).detach() - 1) ** 2).mean()}


class SignalAt:
    """A trainer hook that sends a signal to this process after iteration ``at``."""

    def __init__(self, at: int = 5, signum: int = 15) -> None:
        self.at, self.signum = at, signum

    def selfsup_after_iter(self, runner, outputs) -> None:
        if runner.iter == self.at:
            os.kill(os.getpid(), self.signum)


class _ToFloatDeviceTransform(nn.Module):
    """Converts the batch's uint8 images to float in [0, 1] and counts its calls."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, batch: dict) -> dict:
        self.calls += 1
        batch["img"] = batch["img"].float() / 255
        return batch


class ToyImages:
    """uint8 (C, H, W) images; the float conversion is left to ``device_transform``."""

    def __init__(self, length: int = 16, size: int = 8) -> None:
        generator = torch.Generator().manual_seed(0)
        self.data = torch.randint(0, 256, (length, 3, size, size), dtype=torch.uint8, generator=generator)
        self.device_transform = _ToFloatDeviceTransform()

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> dict:
        return {"img": self.data[index], "idx": index}


class ToyConv(nn.Module):
    """A conv layer; records the dtype and memory format of every batch it sees."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.seen: list[tuple[torch.dtype, bool]] = []

    def forward(self, img: torch.Tensor, mode: str = "train") -> dict:
        self.seen.append((img.dtype, img.is_contiguous(memory_format=torch.channels_last) and not img.is_contiguous()))
        return {"loss": self.conv(img).pow(2).mean(), "acc": torch.tensor(50.0)}


class ToyEvaluator:
    """Scores the fraction of test samples whose extracted features sum above ``threshold``;
    records what it saw (for the online evaluation tests)."""

    calls: list[dict] = []

    def __init__(self, threshold: float = 0.0) -> None:
        self.threshold = threshold

    def evaluate(self, context) -> dict:
        dataset = context.dataset("test")
        images = torch.stack([dataset[i]["img"] for i in range(len(dataset))]).to(context.device)
        with context.eval_mode() as model, torch.no_grad():
            training_inside = model.training
            score = (model(images, mode="extract").sum(dim=1) > self.threshold).float().mean().item()
        ToyEvaluator.calls.append({"epoch": context.epoch, "training_inside": training_inside,
                                   "tag": context.tag, "train_len": len(context.dataset("train"))})
        return {"toy_top1": score, "toy_note": f"epoch {context.epoch}"}

