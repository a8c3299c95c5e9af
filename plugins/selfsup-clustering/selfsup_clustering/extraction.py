"""Features of a whole dataset for clustering: a non-augmenting pass, distributed.

Under torch.distributed each process extracts its strided shard of the dataset (rank ``r``
of ``W`` takes positions ``r, r + W, ...``, the last ones padded by repeating the first
samples); the shards are gathered with ``all_gather`` and interleaved back into dataset
order, so every process ends with the same ``(N, D)`` matrix one process would compute.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable

import torch
from selfsup_core.engine import dist
from selfsup_core.engine.data import build_loader, device_transform_of, to_device
from torch import nn


def images_of(batch: Any) -> torch.Tensor:
    """The image tensor of a batch (the first view of a multi-view batch)."""
    img = batch["img"] if isinstance(batch, Mapping) else batch
    if isinstance(img, (list, tuple)):
        img = img[0]
    if not isinstance(img, torch.Tensor):
        raise TypeError(f"the extraction dataset yields {type(img).__name__} images, not tensors; end its pipeline "
                        "with ToImage and ToDtype")
    return img


def interleave_shards(local: torch.Tensor, length: int, world_size: int) -> torch.Tensor:
    """Gather every rank's strided shard ``(per_rank, ...)`` and put the rows back in dataset order."""
    if world_size == 1:
        return local[:length]
    gathered = dist.all_gather(local.contiguous())  # rank-major: rank r's row i is dataset position i * W + r
    per_rank = local.shape[0]
    rest = local.shape[1:]
    return gathered.reshape(world_size, per_rank, *rest).transpose(0, 1).reshape(-1, *rest)[:length]


@torch.no_grad()
def extract_features(
    model: nn.Module,
    dataset: Any,
    forward: Callable[[torch.Tensor], torch.Tensor],
    *,
    batch_size: int,
    num_workers: int = 0,
    device: torch.device | str = "cpu",
    rank: int = 0,
    world_size: int = 1,
    seed: int = 0,
    autocast_dtype: torch.dtype | None = None,
    channels_last: bool = False,
) -> torch.Tensor:
    """``forward(images) -> (B, D)`` over every sample of ``dataset`` in order, ``(N, D)``
    float32 on ``device``, the same on every process.

    ``model`` is put in eval mode for the pass and its previous mode restored afterwards.
    """
    length = len(dataset)
    if length == 0:
        raise ValueError("the extraction dataset is empty")
    device = torch.device(device)
    loader, sampler = build_loader(dataset, batch_size=batch_size, num_workers=num_workers, seed=seed, rank=rank,
                                   world_size=world_size, drop_last=False, pin_memory=device.type == "cuda",
                                   persistent_workers=False, prefetch_factor=None, shuffle=False)
    sampler.set_epoch(0)
    count = len(sampler)
    transform = device_transform_of(dataset, device)
    autocast = (torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype is not None else None)
    local: torch.Tensor | None = None
    done = 0
    was_training = model.training
    model.eval()
    try:
        for batch in loader:
            batch = to_device(batch, device, device.type == "cuda")
            if transform is not None:
                batch = transform(batch)
            img = images_of(batch)
            if channels_last and img.dim() == 4:
                img = img.contiguous(memory_format=torch.channels_last)
            if autocast is not None:
                with autocast:
                    out = forward(img)
            else:
                out = forward(img)
            out = out.reshape(out.shape[0], -1).float()
            if local is None:
                local = torch.empty(count, out.shape[1], dtype=torch.float32, device=device)
            local[done : done + out.shape[0]] = out
            done += out.shape[0]
    finally:
        model.train(was_training)
    assert local is not None and done == count
    return interleave_shards(local, length, world_size)


__all__ = ["extract_features", "images_of", "interleave_shards"]
