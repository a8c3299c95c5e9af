"""Which way the training data reaches the model: device-resident or a DataLoader.

``[data] resident`` (``"auto"``, true or false) asks for the resident path of
:mod:`selfsup_data.resident`: the decoded training set as one uint8 tensor on the training
device, batches drawn by index and augmented there. ``"auto"`` takes it when the dataset's
pipeline has a batched implementation and the decoded images fit in
``[data] resident_memory_share`` of the device's memory (CUDA: its total memory; CPU: the RAM
available now), except on a CPU with loader workers (``workers_per_gpu`` > 0 after "auto"):
there a worker overlaps augmentation with training, which measured faster on 2 cores;
otherwise the DataLoader path. ``true`` refuses to start, in one line, when
the set does not fit or cannot be made resident.

``[data] workers_per_gpu = "auto"`` gives each local process its share of the CPU cores,
less one for the process itself (:func:`auto_workers`), and turns on persistent workers and a
prefetch of 4 batches when that is more than 0.

The trainer calls :func:`build_data_path` once in its set-up.
"""
from __future__ import annotations

import os
from typing import Any

import torch

from ..errors import ConfigError
from .data import SeededSampler, build_loader

DEFAULT_MEMORY_SHARE = 0.25


def auto_workers(cpu_count: int | None = None, local_world_size: int | None = None) -> int:
    """Loader workers per process for ``workers_per_gpu = "auto"``: the usable CPU cores
    divided among the local processes (``LOCAL_WORLD_SIZE``, default 1), minus one for the
    training process itself, between 0 and 16."""
    if cpu_count is None:
        try:
            cpu_count = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            cpu_count = os.cpu_count() or 1
    if local_world_size is None:
        local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    return max(0, min(16, cpu_count // max(1, local_world_size) - 1))


def available_memory(device: torch.device) -> int:
    """Bytes the resident set may be measured against: a CUDA device's total memory, or the
    RAM available now (``MemAvailable`` of /proc/meminfo, else free physical pages)."""
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory)
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 0


def _mb(n: float) -> str:
    if n < 1e7:
        return f"{n / 1e6:.2f} MB"
    return f"{n / 1e6:,.0f} MB" if n < 1e10 else f"{n / 1e9:,.1f} GB"


def _dataset_name(dataset: Any) -> str:
    source = getattr(dataset, "data_source", None)
    name = type(source).__name__ if source is not None else type(dataset).__name__
    origin = getattr(source, "origin", None) or getattr(source, "root", None)
    return f"{name} ({origin})" if origin else name


def build_data_path(trainer: Any, memory: int | None = None) -> tuple[Any, Any, str]:
    """``(loader, sampler, description)`` for the trainer's training set.

    Args:
        trainer: the Trainer in its set-up (``config``, ``settings``, ``dataset``, ``device``,
            ``rank``, ``world_size`` are read).
        memory: bytes to measure against instead of :func:`available_memory` (tests).
    ``loader`` is a DataLoader or a :class:`selfsup_data.resident.ResidentBatches` (whose
    batches are already augmented: the trainer must not apply the dataset's device transform);
    ``description`` is the start-up line's ``data: ...`` part. Raises ConfigError (one line,
    naming ``data.resident``) for a forced resident path that cannot be taken.
    """
    settings, dataset, device = trainer.settings, trainer.dataset, trainer.device
    mode = getattr(settings, "resident", False)
    reason = None
    workers = settings.workers_per_gpu
    if workers == "auto":
        workers = auto_workers()
    if mode == "auto" and device.type == "cpu" and workers > 0:
        # measured on 2 cores: a loader worker overlaps augmentation with training, which the
        # resident path (augmenting in the training process) cannot
        mode, reason = False, "on a CPU with loader workers; data.resident = true forces it"
    if mode is not False:
        resident, reason = _try_resident(trainer, mode, memory)
        if resident is not None:
            return resident
    persistent, prefetch = settings.persistent_workers, settings.prefetch_factor
    if settings.workers_per_gpu == "auto" and workers > 0:
        persistent = True
        prefetch = prefetch or 4
    pin = device.type == "cuda" if settings.pin_memory == "auto" else bool(settings.pin_memory)
    loader, sampler = build_loader(
        dataset, batch_size=settings.samples_per_gpu, num_workers=workers, seed=settings.seed, rank=trainer.rank,
        world_size=trainer.world_size, drop_last=settings.drop_last, pin_memory=pin,
        persistent_workers=persistent, prefetch_factor=prefetch, replace=settings.replace,
    )
    description = f"DataLoader, {workers} worker{'s' if workers != 1 else ''}"
    if reason:
        description += f" (not resident: {reason})"
    return loader, sampler, description


def _try_resident(trainer: Any, mode: Any, memory: int | None) -> tuple[tuple[Any, Any, str] | None, str | None]:
    settings, dataset, device, config = trainer.settings, trainer.dataset, trainer.device, trainer.config
    forced = mode is True

    def refuse(why: str) -> tuple[None, str]:
        if forced:
            raise ConfigError(config.problem(("data", "resident"), f"{why}; set data.resident = \"auto\" or false"))
        return None, why

    try:
        from selfsup_data.resident import NotResident, ResidentBatches, decode_all, image_shape, plan_resident
    except ImportError as exc:
        return refuse(f"needs selfsup-data's resident module ({exc})")
    try:
        plan = plan_resident(dataset)
        n, c, h, w = image_shape(dataset)
    except NotResident as exc:
        return refuse(str(exc))
    size = n * c * h * w
    share = getattr(settings, "resident_memory_share", DEFAULT_MEMORY_SHARE)
    available = available_memory(device) if memory is None else memory
    if size > share * available:
        return refuse(f"the training set {_dataset_name(dataset)} is {_mb(size)} as uint8 ({n} x {c}x{h}x{w}), more "
                      f"than resident_memory_share = {share:g} of the {_mb(available)} available on {device}")
    try:
        images = decode_all(dataset)
    except NotResident as exc:
        return refuse(str(exc))
    images = images.to(device)
    labels = torch.as_tensor(getattr(dataset, "gt_labels", [-1] * n), dtype=torch.long)
    sampler = SeededSampler(n, num_replicas=trainer.world_size, rank=trainer.rank, shuffle=True, seed=settings.seed,
                            drop_last=settings.drop_last, replace=settings.replace)
    loader = ResidentBatches(plan.to(device), images, labels, sampler, settings.samples_per_gpu, settings.drop_last)
    return (loader, sampler, f"resident on {device} ({_mb(size)} uint8)"), None


__all__ = ["DEFAULT_MEMORY_SHARE", "auto_workers", "available_memory", "build_data_path"]
