"""Helpers shared by the selfsup-pretext tests: an in-memory data source of constructed
images, tensor pipelines, and an :class:`EvalContext` on the CPU."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2

from selfsup_eval import EvalContext


class ArraySource:
    """A data source over uint8 grey images ``(N, H, W)`` held in memory."""

    def __init__(self, images: np.ndarray, labels: np.ndarray | None = None) -> None:
        self.images = images
        self.labels = np.arange(len(images)) if labels is None else labels

    def __len__(self) -> int:
        return len(self.images)

    def get_img(self, idx: int) -> Image.Image:
        return Image.fromarray(self.images[idx], mode="L")

    def get_gt_labels(self) -> np.ndarray:
        return self.labels


def to_float() -> list:
    """PIL grey image -> float tensor (1, H, W) in [0, 1], no randomness."""
    return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]


def eval_context(model: torch.nn.Module, **kwargs) -> EvalContext:
    return EvalContext(model=model, datasets={}, samples_per_gpu=kwargs.pop("samples_per_gpu", 4),
                       workers_per_gpu=0, **kwargs)


