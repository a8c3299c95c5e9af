"""Features of a whole dataset for clustering: a non-augmenting pass, distributed.

Under torch.distributed each process extracts its strided shard of the dataset (rank ``r``
of ``W`` takes positions ``r, r + W, ...``, the last ones padded by repeating the first
samples); ``dist.gather_in_dataset_order`` puts the gathered shards back into dataset
order, so every process ends with the same ``(N, D)`` matrix one process would compute.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from selfsup_core.api import build_loader, device_transform_of, dist, images_of, loader_batches, to_device
from torch import nn


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
        for batch in loader_batches(loader):
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
    return dist.gather_in_dataset_order(local, length)


__all__ = ["extract_features"]
