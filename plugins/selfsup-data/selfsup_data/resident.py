"""Device-resident training data: the whole decoded dataset as one uint8 tensor on the device.

When every image of a ``OneViewDataset`` / ``MultiViewDataset`` has the same size and the
decoded set fits in memory, the trainer (``[data] resident``) keeps it as one ``(N, C, H, W)``
uint8 tensor on the training device, draws each batch by index and runs the whole view
pipeline batched there: no DataLoader, no workers, no per-sample Python.

    plan = plan_resident(dataset)          # None-free: raises NotResident with the reason
    images = decode_all(dataset)           # (N, C, H, W) uint8 on the CPU
    batches = ResidentBatches(plan, images.to(device), labels, sampler, batch_size, ...)

Per view, the pipeline becomes batched ops: ``RandomResizedCrop`` (torchvision's
scale/ratio sampling law, per sample: 10 tries, then the central-crop fallback; the crop is
resized bilinearly with ``grid_sample``, without torchvision's antialiasing when shrinking),
``Resize`` to a fixed size, flips, then the colour/blur/solarise/normalise ops of
:mod:`selfsup_data.device_augment`. Multi-crop configs get one crop size per group.

Randomness: each batch is augmented under the device's generator seeded with the batch's
seed (the sampler's seed of its first sample), and the generator's state is restored
afterwards; a batch's views therefore depend only on (run seed, epoch, position), exactly like
the DataLoader path, so a run resumed mid-epoch sees the batches of the uninterrupted run.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision import transforms as v1
from torchvision.transforms import v2

from .device_augment import DeviceAugment, ToUint8CHW, _CONVERSIONS, _FlipOp, split_pipeline

__all__ = [
    "NotResident", "ResidentBatches", "ResidentPlan", "ViewPipeline", "crop_boxes", "decode_all", "plan_resident",
    "resized_crops",
]


class NotResident(ValueError):
    """The dataset cannot take the resident path; the message says why in one line."""


# -- RandomResizedCrop, batched ------------------------------------------------------------------------------
def crop_boxes(n: int, height: int, width: int, scale: Sequence[float], ratio: Sequence[float],
               device: torch.device, tries: int = 10) -> torch.Tensor:
    """Per-sample crop boxes drawn with torchvision's ``RandomResizedCrop.get_params`` law.

    Args:
        n: number of boxes; height, width: the source images' size.
        scale: (min, max) share of the image area; ratio: (min, max) aspect ratio w/h.
        device: where the random numbers are drawn (the device's default generator).
    Returns:
        (n, 4) float tensor of ``(top, left, h, w)`` in pixels (integers stored as float).
        For each sample: up to ``tries`` draws of area ~ U(scale) * H * W and log-ratio ~
        U(log ratio); the first whose rounded (w, h) fits is used with top ~ U{0..H-h},
        left ~ U{0..W-w}; if none fits, torchvision's central-crop fallback.
    """
    area = float(height * width)
    target = area * (scale[0] + (scale[1] - scale[0]) * torch.rand(n, tries, device=device))
    lo, hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(lo + (hi - lo) * torch.rand(n, tries, device=device))
    w = torch.round(torch.sqrt(target * aspect))
    h = torch.round(torch.sqrt(target / aspect))
    ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = ok.to(torch.int8).argmax(dim=1, keepdim=True)  # first fitting try (0 when none fits)
    any_ok = ok.any(dim=1)
    w = w.gather(1, first).squeeze(1)
    h = h.gather(1, first).squeeze(1)
    # the central-crop fallback
    in_ratio = width / height
    if in_ratio < min(ratio):
        fw, fh = width, round(width / min(ratio))
    elif in_ratio > max(ratio):
        fw, fh = round(height * max(ratio)), height
    else:
        fw, fh = width, height
    w = torch.where(any_ok, w, torch.full_like(w, float(fw)))
    h = torch.where(any_ok, h, torch.full_like(h, float(fh)))
    u = torch.rand(n, 2, device=device)
    top = torch.floor(u[:, 0] * (height - h + 1))
    left = torch.floor(u[:, 1] * (width - w + 1))
    top = torch.where(any_ok, top, torch.full_like(top, float((height - fh) // 2)))
    left = torch.where(any_ok, left, torch.full_like(left, float((width - fw) // 2)))
    return torch.stack([top, left, h, w], dim=1)


def resized_crops(images: torch.Tensor, boxes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Crop ``boxes`` (n, 4: top, left, h, w) out of float images (n, C, H, W) and resize each
    crop to ``size`` (h, w) bilinearly (``grid_sample``, half-pixel centres, sample positions
    clamped to the crop's edge pixels, as when resizing the cropped image; no antialiasing).
    A box covering the whole image at the image's size returns the image unchanged."""
    n, _, height, width = images.shape
    top, left, h, w = boxes.unbind(1)
    theta = torch.zeros(n, 2, 3, device=images.device, dtype=images.dtype)
    theta[:, 0, 0] = w / width
    theta[:, 0, 2] = (2 * left + w) / width - 1
    theta[:, 1, 1] = h / height
    theta[:, 1, 2] = (2 * top + h) / height - 1
    grid = F.affine_grid(theta, [n, images.shape[1], size[0], size[1]], align_corners=False)
    # clamp to the crop's outer pixel centres: like resizing the cropped image, never read outside it
    low = torch.stack([(2 * left + 1) / width - 1, (2 * top + 1) / height - 1], 1).view(n, 1, 1, 2)
    high = torch.stack([(2 * (left + w) - 1) / width - 1, (2 * (top + h) - 1) / height - 1], 1).view(n, 1, 1, 2)
    grid = torch.maximum(torch.minimum(grid, high.to(grid.dtype)), low.to(grid.dtype))
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _size_of(size: Any) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    size = list(size)
    return (int(size[0]), int(size[0])) if len(size) == 1 else (int(size[0]), int(size[1]))


class _RandomResizedCropOp(nn.Module):
    def __init__(self, size: Any, scale: Sequence[float], ratio: Sequence[float]) -> None:
        super().__init__()
        self.size = _size_of(size)
        self.scale, self.ratio = tuple(float(s) for s in scale), tuple(float(r) for r in ratio)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        boxes = crop_boxes(x.shape[0], x.shape[2], x.shape[3], self.scale, self.ratio, x.device)
        return resized_crops(x, boxes.to(x.dtype), self.size)


class _ResizeOp(nn.Module):
    """torchvision's Resize: an int resizes the shorter side (keeping the aspect ratio), a
    pair gives (h, w); bilinear with antialiasing."""

    def __init__(self, size: Any) -> None:
        super().__init__()
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        size = self.size[0] if isinstance(self.size, (list, tuple)) and len(self.size) == 1 else self.size
        if isinstance(size, int):
            short, long = (height, width) if height <= width else (width, height)
            other = int(size * long / short)
            target = (size, other) if height <= width else (other, size)
        else:
            target = (int(size[0]), int(size[1]))
        if (height, width) == target:
            return x
        return F.interpolate(x, size=target, mode="bilinear", align_corners=False, antialias=True)


_CROPS = (v2.RandomResizedCrop, v1.RandomResizedCrop)
_RESIZES = (v2.Resize, v1.Resize)
_FLIPS = (v2.RandomHorizontalFlip, v1.RandomHorizontalFlip, v2.RandomVerticalFlip, v1.RandomVerticalFlip)


def _geometry_ops(transforms: Sequence[Any], owner: str) -> list[nn.Module]:
    """Batched ops for the CPU part of a split pipeline (crops, resizes, flips, conversions)."""
    ops: list[nn.Module] = []
    for t in transforms:
        if isinstance(t, _CROPS):
            ops.append(_RandomResizedCropOp(t.size, t.scale, t.ratio))
        elif isinstance(t, _RESIZES):
            ops.append(_ResizeOp(t.size))
        elif isinstance(t, _FLIPS):
            horizontal = isinstance(t, (v2.RandomHorizontalFlip, v1.RandomHorizontalFlip))
            ops.append(_FlipOp(-1 if horizontal else -2, float(t.p)))
        elif isinstance(t, _CONVERSIONS + (ToUint8CHW,)):
            continue
        else:
            raise NotResident(f"{owner}: {type(t).__name__} has no batched device implementation")
    return ops


class ViewPipeline(nn.Module):
    """One view's batched pipeline: geometry ops on float 0..1 images, then a DeviceAugment.

    Call with (n, C, H, W) uint8 images on any device; returns float32 (n, C', h, w)."""

    def __init__(self, geometry: list[nn.Module], rest: DeviceAugment) -> None:
        super().__init__()
        self.geometry = nn.ModuleList(geometry)
        self.rest = rest

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float().div_(255)
        for op in self.geometry:
            x = op(x)
        return self.rest(x)


class ResidentPlan:
    """What the resident path runs for a dataset: one :class:`ViewPipeline` per view and
    whether the batch's ``img`` is a list of views (MultiViewDataset) or one tensor."""

    def __init__(self, views: list[ViewPipeline], multi_view: bool) -> None:
        self.views = views
        self.multi_view = multi_view

    def to(self, device: torch.device) -> "ResidentPlan":
        for view in self.views:
            view.to(device)
        return self


def _groups_of(dataset: Any) -> tuple[list[Any], list[int], bool]:
    """``(composed pipelines, views per group, multi_view)`` of a OneView/MultiView dataset."""
    from .datasets.views import MultiViewDataset, OneViewDataset

    # exact types: subclasses (DeepCluster's pseudo-labels ...) add per-sample outputs
    if type(dataset) is MultiViewDataset:
        return list(dataset.pipelines), list(dataset.num_views), True
    if type(dataset) is OneViewDataset:
        return [dataset.pipeline], [1], False
    raise NotResident(f"{type(dataset).__name__} is not a OneViewDataset or MultiViewDataset")


def plan_resident(dataset: Any) -> ResidentPlan:
    """The batched pipelines of ``dataset`` (a OneViewDataset or MultiViewDataset, ``augment_on``
    ``"cpu"`` or ``"device"``). Called once, before training. Raises :class:`NotResident` naming
    the first transform (or dataset feature) the resident path cannot run."""
    owner = type(dataset).__name__
    if getattr(dataset, "on_bad_sample", "error") == "skip":
        raise NotResident(f"{owner}: on_bad_sample = 'skip' needs per-sample loading")
    pipelines, counts, multi_view = _groups_of(dataset)
    device_views = getattr(getattr(dataset, "device_transform", None), "per_view", None)
    views: list[ViewPipeline] = []
    first_view = 0
    for g, (pipeline, count) in enumerate(zip(pipelines, counts)):
        transforms = list(getattr(pipeline, "transforms", []))
        if getattr(dataset, "augment_on", "cpu") == "device" and device_views is not None:
            # a copy: the dataset keeps its own on the CPU (loader workers must never get CUDA tensors)
            cpu_part, rest = transforms, copy.deepcopy(device_views[first_view])
        else:
            try:
                cpu_part, rest = split_pipeline(transforms)
            except ValueError as exc:
                raise NotResident(str(exc).splitlines()[0]) from exc
        if not isinstance(rest, DeviceAugment):
            rest = DeviceAugment([])
        view = ViewPipeline(_geometry_ops(cpu_part, f"{owner} pipelines[{g}]"), rest)
        views += [view] * count
        first_view += count
    return ResidentPlan(views, multi_view)


# -- decoding -----------------------------------------------------------------------------------------------
def image_shape(dataset: Any) -> tuple[int, int, int, int]:
    """``(N, C, H, W)`` of the decoded set, from its first image (called before decoding all)."""
    first = ToUint8CHW()(dataset.data_source.get_img(0))
    return (len(dataset.data_source), *first.shape)


def decode_all(dataset: Any) -> torch.Tensor:
    """Every image of ``dataset.data_source`` decoded once: (N, C, H, W) uint8 on the CPU.

    Array sources whose stored layout already matches the decoded one are copied without
    going through PIL. Raises :class:`NotResident` when the images differ in size."""
    source = dataset.data_source
    n, c, h, w = image_shape(dataset)
    arr = getattr(source, "images", None)
    if isinstance(arr, np.ndarray) and arr.dtype == np.uint8 and len(arr) == n:
        if arr.ndim == 3 and c == 1 and arr.shape[1:] == (h, w):
            return torch.from_numpy(np.array(arr, copy=True)).unsqueeze(1)
        if arr.ndim == 4 and arr.shape[1:] == (h, w, c):
            return torch.from_numpy(np.array(arr, copy=True)).permute(0, 3, 1, 2).contiguous()
    out = torch.empty((n, c, h, w), dtype=torch.uint8)
    to_tensor = ToUint8CHW()
    for i in range(n):
        img = to_tensor(source.get_img(i))
        if img.shape != (c, h, w):
            raise NotResident(f"{type(dataset).__name__}: image {i} is {tuple(img.shape)}, image 0 is {(c, h, w)}; "
                              "the resident path needs one image size")
        out[i] = img
    return out


# -- batches ------------------------------------------------------------------------------------------------
@contextmanager
def seeded_generator(device: torch.device, seed: int) -> Iterator[None]:
    """Run the block with ``device``'s default generator seeded with ``seed``; its previous
    state is restored afterwards (host-side only: no device synchronisation on CUDA)."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        state = torch.cuda.get_rng_state(index)
        torch.cuda.manual_seed(seed)  # the current device's generator
        try:
            yield
        finally:
            torch.cuda.set_rng_state(state, index)
    else:
        generator = torch.default_generator
        state = generator.get_state()
        generator.manual_seed(seed)
        try:
            yield
        finally:
            generator.set_state(state)


class _BatchSampler:
    """Holds the sampler the trainer's ``replace_sampler`` swaps (``loader.batch_sampler.sampler``)."""

    def __init__(self, sampler: Any) -> None:
        self.sampler = sampler


class ResidentBatches:
    """Batches drawn by index from device-resident images, augmented on the device.

    Args:
        plan: the view pipelines (:func:`plan_resident`), already on ``images``' device.
        images: (N, C, H, W) uint8 on the training device.
        labels: (N,) int64 labels (-1: none).
        sampler: yields ``(index, seed)`` pairs for this rank's epoch (``SeededSampler``);
            the trainer calls its ``set_epoch`` before each epoch.
        batch_size, drop_last: as the DataLoader's.
    Iterating gives dicts ``{"img": [views] or tensor, "label", "idx"}`` on the device, the
    views already float and normalised (the trainer applies no device transform after it).
    """

    def __init__(self, plan: ResidentPlan, images: torch.Tensor, labels: torch.Tensor, sampler: Any,
                 batch_size: int, drop_last: bool) -> None:
        self.plan, self.images, self.labels = plan, images, labels.to(images.device)
        self.batch_sampler = _BatchSampler(sampler)
        self.batch_size, self.drop_last = batch_size, drop_last

    @property
    def sampler(self) -> Any:
        return self.batch_sampler.sampler

    def __len__(self) -> int:
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        pairs = list(iter(self.sampler))
        if not pairs:
            return
        device = self.images.device
        order = torch.tensor([i for i, _ in pairs], dtype=torch.long)
        if device.type == "cuda":
            order = order.pin_memory()
        order = order.to(device, non_blocking=True)  # one copy per epoch
        seeds = [s for _, s in pairs]
        for b in range(len(self)):
            lo = b * self.batch_size
            hi = min(lo + self.batch_size, len(pairs))
            yield self.batch(order[lo:hi], seeds[lo])

    def batch(self, idx: torch.Tensor, seed: int) -> dict[str, Any]:
        """The augmented batch of samples ``idx`` (a device tensor), drawn under ``seed``."""
        with torch.no_grad(), seeded_generator(self.images.device, seed):
            raw = self.images.index_select(0, idx)
            views = [view(raw) for view in self.plan.views]
        img: Any = views if self.plan.multi_view else views[0]
        return {"img": img, "label": self.labels.index_select(0, idx), "idx": idx}
