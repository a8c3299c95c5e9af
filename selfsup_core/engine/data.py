"""Data loading for the trainer: a resumable distributed sampler and per-sample seeding.

Each sample is drawn with its own seed, derived from (run seed, epoch, position in the
epoch). The random augmentations therefore do not depend on the number of workers, on
which worker loads a sample, or on whether the run was interrupted and resumed: a resumed
run sees exactly the batches the uninterrupted run would have seen.
"""
from __future__ import annotations

import copy
import math
import random
import signal
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, get_worker_info


class SeededSampler(Sampler):
    """Shuffled indices for one rank, each paired with a per-sample seed.

    The order is a permutation seeded by ``(seed, epoch)`` and split across ranks like
    ``DistributedSampler`` (padded to a multiple of ``num_replicas``, or truncated when
    ``drop_last``). ``start`` skips the first samples of this rank's share for a resumed
    epoch. ``replace=True`` draws the epoch's ``length`` indices uniformly with replacement
    instead (MMSelfSup 0.x's ``sampling_replace``, used by ODC). Yields ``(index,
    sample_seed)`` pairs.
    """

    def __init__(
        self,
        length: int,
        *,
        num_replicas: int = 1,
        rank: int = 0,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        replace: bool = False,
    ) -> None:
        self.length, self.num_replicas, self.rank = length, num_replicas, rank
        self.shuffle, self.seed, self.drop_last = shuffle, seed, drop_last
        self.replace = replace
        self.epoch = 0
        self.start = 0
        if drop_last and length % num_replicas:
            self.num_samples = length // num_replicas
        else:
            self.num_samples = math.ceil(length / num_replicas)
        self.total_size = self.num_samples * num_replicas

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the epoch's permutation; ``start`` samples of this rank are skipped."""
        self.epoch, self.start = epoch, start

    def _permutation(self) -> tuple[torch.Tensor, torch.Tensor]:
        generator = torch.Generator()
        generator.manual_seed(self.seed * 1_000_003 + self.epoch)
        if self.replace and self.shuffle:
            order = torch.randint(0, self.length, (self.length,), generator=generator)
        else:
            order = torch.randperm(self.length, generator=generator) if self.shuffle else torch.arange(self.length)
        seeds = torch.randint(0, 2**62, (self.total_size,), generator=generator)
        if self.total_size > self.length:  # pad by repeating from the start, like DistributedSampler
            repeats = math.ceil(self.total_size / self.length)
            order = order.repeat(repeats)
        return order[: self.total_size], seeds

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order, seeds = self._permutation()
        mine = slice(self.rank, self.total_size, self.num_replicas)
        indices, sample_seeds = order[mine].tolist(), seeds[mine].tolist()
        return iter(list(zip(indices, sample_seeds))[self.start :])

    def __len__(self) -> int:
        return self.num_samples - self.start


class SeededDataset(Dataset):
    """Wraps a dataset so that ``dataset[(index, seed)]`` draws sample ``index`` with its own
    seed.

    torch's generator (which torchvision's and selfsup's transforms use) is seeded per
    sample; Python's ``random`` and NumPy once per batch, with the batch's first seed
    (``__getitems__``; seeding those per sample would cost ~20 us each). Seeds depend only on
    (run seed, epoch, position), so the augmentations do not depend on the number of
    workers or processes, and a run resumed at a batch boundary sees exactly the batches an
    uninterrupted run would have seen.

    In a DataLoader worker the generators are simply re-seeded. In the main process
    (``workers_per_gpu = 0``) torch's generator is restored afterwards, so the model's random
    stream (dropout, masking) is the same with or without data loading in between; Python's
    and NumPy's generators are re-seeded from the batch seed instead of restored (restoring
    NumPy's state costs ~150 us), which keeps them deterministic.
    """

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: tuple[int, int]) -> Any:
        return self.__getitems__([item])[0]

    def __getitems__(self, items: list[tuple[int, int]]) -> list[Any]:
        batch_seed = items[0][1]
        generator = torch.default_generator
        random.seed(batch_seed)
        np.random.seed(batch_seed % 2**32)
        in_worker = get_worker_info() is not None
        state = None if in_worker else generator.get_state()
        samples = []
        try:
            for index, seed in items:
                generator.manual_seed(seed)
                samples.append(self.dataset[index])
        finally:
            if state is not None:
                generator.set_state(state)
                after = (batch_seed ^ 0x5DEECE66D) % 2**32
                random.seed(after)
                np.random.seed(after)
        return samples


def build_loader(
    dataset: Any,
    *,
    batch_size: int,
    num_workers: int,
    seed: int,
    rank: int,
    world_size: int,
    drop_last: bool,
    pin_memory: bool,
    persistent_workers: bool,
    prefetch_factor: int | None,
    shuffle: bool = True,
    replace: bool = False,
) -> tuple[DataLoader, SeededSampler]:
    """The training DataLoader and its sampler (call ``sampler.set_epoch`` every epoch).

    ``shuffle=False`` (evaluation): rank ``r`` of ``W`` gets positions ``r, r + W, ...`` of
    the dataset in order, padded by repeating the first samples to equal shares.
    ``replace=True`` (``[data] replace``): each epoch samples with replacement.
    """
    sampler = SeededSampler(
        len(dataset), num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed, drop_last=drop_last,
        replace=replace,
    )
    kwargs: dict[str, Any] = {}
    if num_workers > 0:
        kwargs["persistent_workers"] = persistent_workers
        if prefetch_factor is not None:
            kwargs["prefetch_factor"] = prefetch_factor
        kwargs["worker_init_fn"] = IgnoreStopSignals(getattr(dataset, "worker_init_fn", None))
    collate = getattr(dataset, "collate_fn", None)
    if collate is not None:
        kwargs["collate_fn"] = collate
    loader = DataLoader(
        SeededDataset(dataset),
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        pin_memory=pin_memory,
        drop_last=drop_last,
        # A private generator: creating an iterator must not draw from the global torch RNG
        # (that would shift the model's random stream when a run resumes mid-epoch).
        generator=torch.Generator().manual_seed(seed),
        **kwargs,
    )
    return loader, sampler


def shut_down_workers(batches: Any, loader: Any) -> None:
    """Stop the worker processes of a loader iterator that an error left behind.

    The workers ignore SIGTERM (``IgnoreStopSignals``), so multiprocessing's exit handler,
    which terminates daemonic children and then waits for them, would wait forever for an
    iterator still referenced at exit (by a traceback, for instance). This asks them to end
    the way the iterator itself does when it is deleted. ``batches`` may be None or a
    single-process iterator (nothing to do)."""
    shutdown = getattr(batches, "_shutdown_workers", None)
    if callable(shutdown):
        shutdown()
    if getattr(loader, "_iterator", None) is batches:
        loader._iterator = None  # a persistent-workers loader would otherwise hand it out again


def loader_batches(loader: Any) -> Iterator[Any]:
    """Iterate over ``loader``; when loading a batch fails, stop its worker processes before
    the error goes on (see ``shut_down_workers``). For loops outside the training loop
    (feature extraction, evaluation)."""
    batches = iter(loader)
    try:
        yield from batches
    except BaseException:
        shut_down_workers(batches, loader)
        raise


class IgnoreStopSignals:
    """A loader's ``worker_init_fn``: the worker ignores SIGTERM and SIGINT, then calls
    ``then(worker_id)`` (the dataset's own ``worker_init_fn``, if any).

    ``timeout``, Slurm's ``scancel``, systemd and Ctrl-C signal the whole process group; the
    workers must outlive the signal so that the main process can finish its step and save a
    checkpoint (the workers end with it). Picklable, for the ``spawn`` start method.
    """

    def __init__(self, then: Any = None) -> None:
        self.then = then

    def __call__(self, worker_id: int) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if self.then is not None:
            self.then(worker_id)


def device_transform_of(dataset: Any, device: torch.device) -> Any:
    """The dataset's batched ``device_transform`` (or None), as a copy on ``device`` when it
    is a module (its buffers: normalisation constants ...); the dataset keeps its own on the
    CPU, so that loader workers never receive CUDA tensors."""
    transform = getattr(dataset, "device_transform", None)
    if isinstance(transform, torch.nn.Module):
        return copy.deepcopy(transform).to(device)
    return transform


def to_device(batch: Any, device: torch.device, non_blocking: bool = True) -> Any:
    """Move every tensor in a nested batch (dicts, lists, tuples) to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=non_blocking)
    if isinstance(batch, Mapping):
        return {k: to_device(v, device, non_blocking) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device, non_blocking) for v in batch)
    return batch


def images_to_channels_last(batch: Any) -> Any:
    """Convert the 4-d float tensors of a batch to channels_last memory format."""
    if isinstance(batch, torch.Tensor):
        if batch.dim() == 4 and batch.is_floating_point():
            return batch.contiguous(memory_format=torch.channels_last)
        return batch
    if isinstance(batch, Mapping):
        return {k: images_to_channels_last(v) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(images_to_channels_last(v) for v in batch)
    return batch


def images_of(batch: Any) -> torch.Tensor:
    """The image tensor of a non-augmenting pass's batch: ``batch["img"]`` (or the batch itself),
    the first view of a multi-view batch; a TypeError when the pipeline left images untensored."""
    img = batch["img"] if isinstance(batch, Mapping) else batch
    if isinstance(img, (list, tuple)):
        img = img[0]
    if not isinstance(img, torch.Tensor):
        raise TypeError(f"the dataset yields {type(img).__name__} images, not tensors; end its pipeline with "
                        "ToImage and ToDtype (or ToTensor)")
    return img


def batch_size_of(batch: Any) -> int:
    """Number of samples in a batch: the first dimension of its first tensor."""
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.dim() else 1
    if isinstance(batch, Mapping):
        for key in ("img", *batch.keys()):
            if key in batch:
                size = batch_size_of(batch[key])
                if size:
                    return size
        return 0
    if isinstance(batch, (list, tuple)):
        for item in batch:
            size = batch_size_of(item)
            if size:
                return size
    return 0


__all__ = [
    "SeededDataset", "SeededSampler", "batch_size_of", "build_loader", "device_transform_of", "images_of",
    "images_to_channels_last",
    "to_device",
]
