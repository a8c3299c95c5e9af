"""A tiny algorithm, dataset and evaluators for the ``[evaluation]`` engine tests (online
evaluation, ``selfsup-run eval``), used through import-path types
(``type = "eval_online_toy:ToyEvaluator"``); conftest puts this folder on sys.path and the
tests' subprocesses get it on PYTHONPATH."""
from __future__ import annotations

import torch
from torch import nn

#: a 3-epoch training run of ToyAlgorithm on ToyDataset (8 iterations per epoch)
BASE_CONFIG = """
seed = 3
deterministic = true

[model]
type = "eval_online_toy:ToyAlgorithm"
dim = 8

[data]
samples_per_gpu = 8
workers_per_gpu = 0

[data.train]
type = "eval_online_toy:ToyDataset"
length = 64

[optimizer]
type = "SGD"
lr = 0.05
momentum = 0.9

[runner]
max_epochs = 3

[log_config]
interval = 2
progress = "lines"
"""

#: online evaluation every 2 epochs with ToyEvaluator
EVALUATION = """
[evaluation]
interval = 2
online = "ToyEvaluator"
samples_per_gpu = 16
workers_per_gpu = 0

[evaluation.train]
type = "eval_online_toy:ToyDataset"
length = 24
noise = 0.0

[evaluation.test]
type = "eval_online_toy:ToyDataset"
length = 12
noise = 0.0
seed = 1

[[evaluation.evaluators]]
type = "eval_online_toy:ToyEvaluator"
threshold = 0.0
"""


class ToyDataset:
    """``length`` fixed random vectors; each draw adds torch-RNG noise (an "augmentation")."""

    def __init__(self, length: int = 64, dim: int = 8, noise: float = 0.1, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.data = torch.randn(length, dim, generator=generator)
        self.noise = noise

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> dict:
        img = self.data[index] + self.noise * torch.randn(self.data.shape[1])
        return {"img": img, "label": index % 2, "idx": index}


class ToyAlgorithm(nn.Module):
    """Two linear layers with dropout; loss = MSE to the reversed input."""

    def __init__(self, dim: int = 8, hidden: int = 16, dropout: float = 0.1) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, dim))

    def forward(self, img: torch.Tensor, mode: str = "train", idx: torch.Tensor | None = None) -> object:
        if mode == "extract":
            return self.net(img)
        return {"loss": ((self.net(img) - img.flip(-1)) ** 2).mean()}


class ToyEvaluator:
    """Scores the fraction of test samples whose extracted features sum above ``threshold``;
    records what it saw."""

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


class FailingEvaluator:
    """Fails from the ``fail_at``-th call on, like an evaluator meeting bad data mid-run."""

    calls = 0

    def __init__(self, fail_at: int = 2) -> None:
        self.fail_at = fail_at

    def evaluate(self, context) -> dict:
        FailingEvaluator.calls += 1
        if FailingEvaluator.calls >= self.fail_at:
            raise ValueError("the test split has no labels")
        return {"toy_top1": 0.5}
