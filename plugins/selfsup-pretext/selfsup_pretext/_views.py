"""Shared by the pretext algorithms: checking and flattening ``(N, K, C, H, W)`` batches."""
from __future__ import annotations

from typing import Any

import torch


def flatten_views(owner: str, img: Any, dataset: str, views: int | None = None) -> torch.Tensor:
    """``img (N, K, C, H, W)`` -> ``(N * K, C, H, W)``, sample-major (row ``n * K + k`` is
    ``img[n, k]``); a one-line ``ValueError`` naming ``dataset`` for any other input."""
    if not isinstance(img, torch.Tensor) or img.dim() != 5:
        got = tuple(img.shape) if isinstance(img, torch.Tensor) else type(img).__name__
        raise ValueError(f"{owner}: expects img of shape (N, K, C, H, W) as {dataset} produces, got {got}; "
                         f"use data.train.type = \"{dataset}\"")
    if views is not None and img.shape[1] != views:
        raise ValueError(f"{owner}: expects {views} images per sample (img of shape (N, {views}, C, H, W)), "
                         f"got {img.shape[1]}; use data.train.type = \"{dataset}\"")
    return img.reshape(-1, *img.shape[2:])


def flatten_labels(owner: str, labels: Any, img: torch.Tensor, name: str) -> torch.Tensor:
    """``labels (N, K)`` -> ``(N * K,)`` int64, checked against ``img (N, K, ...)``."""
    if not isinstance(labels, torch.Tensor) or tuple(labels.shape) != tuple(img.shape[:2]):
        got = tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise ValueError(f"{owner}: {name} must have shape {tuple(img.shape[:2])} (one label per image of img), "
                         f"got {got}")
    return labels.reshape(-1).long()
