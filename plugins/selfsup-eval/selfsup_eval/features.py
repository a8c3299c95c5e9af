"""Feature extraction for evaluators: batched, on the device, under autocast, distributed.

Under torchrun every process extracts its shard of the dataset (rank ``r`` of ``W`` takes
positions ``r, r + W, ...``); the shards are gathered and put back in dataset order, so
every process ends with the same ``(N, D)`` features as one process would.

Which features (``feature``):
    ``"extract"``  ``model(img, mode="extract")`` (MMSelfSup's convention: the algorithm
                   decides; usually the backbone's outputs), or ``model(img)`` when
                   ``forward`` takes no ``mode``: a plain ``nn.Module`` works too.
    ``"backbone"`` ``model.backbone(img)``.
    ``"neck"``     ``model.neck(model.backbone(img))``.

How a model's output becomes one vector per image (``pool``):
    ``"avg"``      the last element of nested tuples/lists (the last stage; for a ViT with
                   ``output_cls_token`` the class token), then global average pooling of a
                   map ``(N, C, H, W)`` or of tokens ``(N, L, C)``.
    ``"flatten"``  the last element, flattened (raw pixels: ``nn.Identity()`` as the model).
"""
from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import attrs
import torch
from torch import nn

from selfsup_core.api import build_loader, device_transform_of, dist, images_of, loader_batches, to_device

from .evaluation import EvalContext

FEATURES = ("extract", "backbone", "neck")
POOLS = ("avg", "flatten")


@attrs.frozen
class Features:
    """Features ``(N, D)`` float32 and labels ``(N,)`` int64 (or None), in dataset order, on
    the extraction device."""

    features: torch.Tensor
    labels: torch.Tensor | None

    def __len__(self) -> int:
        return int(self.features.shape[0])


def check_choice(owner: str, name: str, value: str, choices: tuple[str, ...]) -> str:
    """``value`` if it is one of ``choices``, else a ValueError naming them."""
    if value not in choices:
        raise ValueError(f"{owner}: {name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


def pool_output(output: Any, pool: str = "avg") -> torch.Tensor:
    """One vector per image from a model's output (see the module docstring)."""
    while isinstance(output, (list, tuple)):
        if not output:
            raise ValueError("the model returned an empty tuple of features")
        output = output[-1]
    if not isinstance(output, torch.Tensor):
        raise TypeError(f"the model returned {type(output).__name__}, not a tensor of features")
    if output.dim() == 1:
        return output.unsqueeze(1)
    if pool == "flatten" or output.dim() == 2:
        return output.flatten(1)
    if output.dim() == 4:
        return output.mean(dim=(2, 3))
    if output.dim() == 3:
        return output.mean(dim=1)
    return output.flatten(1)


def _takes_mode(model: nn.Module) -> bool:
    try:
        parameters = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False
    return "mode" in parameters or any(p.kind is p.VAR_KEYWORD for p in parameters.values())


def model_output(model: nn.Module, img: torch.Tensor, feature: str = "extract") -> Any:
    """The raw output ``feature`` selects (see the module docstring)."""
    if feature == "extract":
        return model(img, mode="extract") if _takes_mode(model) else model(img)
    backbone = getattr(model, "backbone", None)
    if not isinstance(backbone, nn.Module):
        raise ValueError(f"feature = {feature!r} needs a model with a backbone; {type(model).__name__} has none "
                         "(use feature = 'extract')")
    output = backbone(img)
    if feature == "neck":
        neck = getattr(model, "neck", None)
        if not isinstance(neck, nn.Module):
            raise ValueError(f"feature = 'neck': {type(model).__name__} has no neck")
        output = neck(output)
    return output


def labels_of(batch: Any) -> torch.Tensor | None:
    if isinstance(batch, Mapping) and isinstance(batch.get("label"), torch.Tensor):
        return batch["label"]
    return None


def eval_loader(context: EvalContext, dataset: Any, *, shuffle: bool = False, epoch: int = 0,
                drop_last: bool = False, batch_size: int | None = None) -> torch.utils.data.DataLoader:
    """A loader over this process's shard of ``dataset`` (in order unless ``shuffle``) with
    ``batch_size`` samples per batch (default: the context's ``samples_per_gpu``)."""
    loader, sampler = build_loader(
        dataset,
        batch_size=batch_size or context.samples_per_gpu,
        num_workers=context.workers_per_gpu,
        seed=context.seed,
        rank=context.rank,
        world_size=context.world_size,
        drop_last=drop_last,
        pin_memory=context.device.type == "cuda",
        persistent_workers=False,
        prefetch_factor=None,
        shuffle=shuffle,
    )
    sampler.set_epoch(epoch)
    return loader


def iterate_batches(context: EvalContext, dataset: Any, loader: Any):
    """Yield ``(images, labels)`` on the device: device transforms applied, channels_last
    when the run uses it."""
    device = context.device
    non_blocking = device.type == "cuda"
    transform = device_transform_of(dataset, device)
    for batch in loader_batches(loader):
        batch = to_device(batch, device, non_blocking)
        if transform is not None:
            with torch.no_grad():
                batch = transform(batch)
        img = images_of(batch)
        if context.channels_last and img.dim() == 4:
            img = img.contiguous(memory_format=torch.channels_last)
        yield img, labels_of(batch)


@torch.no_grad()
def extract_dataset(context: EvalContext, dataset: Any, *, feature: str = "extract", pool: str = "avg") -> Features:
    """Features of every sample of ``dataset`` in order, gathered from all processes."""
    length = len(dataset)
    if length == 0:
        raise ValueError("the evaluation dataset is empty")
    loader = eval_loader(context, dataset)
    count = len(loader.sampler)  # this process's share, padded to equal shares
    # filled in place: no second copy of an ImageNet-sized feature matrix at the end
    local: torch.Tensor | None = None
    local_labels: torch.Tensor | None = torch.empty(count, dtype=torch.long, device=context.device)
    done = 0
    with context.eval_mode() as model:
        for img, labels in iterate_batches(context, dataset, loader):
            with context.autocast():
                output = model_output(model, img, feature)
            vectors = pool_output(output, pool)
            if local is None:
                local = torch.empty(count, vectors.shape[1], dtype=torch.float32, device=vectors.device)
            local[done : done + len(vectors)] = vectors
            if labels is None:
                local_labels = None
            elif local_labels is not None:
                local_labels[done : done + len(vectors)] = labels.reshape(-1)
            done += len(vectors)
    assert local is not None and done == count
    return Features(dist.gather_in_dataset_order(local, length),
                    None if local_labels is None else dist.gather_in_dataset_order(local_labels, length))


def extract(context: EvalContext, split: str, *, feature: str = "extract", pool: str = "avg") -> Features:
    """Features of the ``[evaluation.<split>]`` dataset, cached in ``context.cache`` so that
    the evaluators of one evaluation extract each split once."""
    key = ("features", split, feature, pool)
    if key not in context.cache:
        context.cache[key] = extract_dataset(context, context.dataset(split), feature=feature, pool=pool)
    return context.cache[key]


def require_labels(features: Features, split: str, owner: str) -> torch.Tensor:
    """The labels of ``features``, or a clear error when the dataset has none."""
    labels = features.labels
    unlabelled = None if labels is None else int((labels < 0).sum())
    if labels is None or unlabelled:
        what = "no 'label'" if labels is None else f"{unlabelled} of {len(labels)} samples without a label (-1)"
        raise ValueError(f"{owner}: the [evaluation.{split}] dataset gives {what}; use a labelled data source "
                         "(e.g. the FashionMNIST or ImageFolder source with class folders)")
    return labels


__all__ = [
    "FEATURES",
    "POOLS",
    "Features",
    "check_choice",
    "eval_loader",
    "extract",
    "extract_dataset",
    "images_of",
    "iterate_batches",
    "labels_of",
    "model_output",
    "pool_output",
    "require_labels",
]
