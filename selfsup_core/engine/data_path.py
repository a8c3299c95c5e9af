"""Which way the training data reaches the model: device-resident or a DataLoader.

``[data] resident`` (``"auto"``, true or false) asks the plugins' ``selfsup_resident_data``
hook (selfsup-data implements it) for the decoded training set held on the training device,
batches drawn by index and augmented there. ``"auto"`` takes it when a plugin can, except
on a CPU with loader workers (``workers_per_gpu`` > 0 after "auto"): there a worker overlaps
augmentation with training, which measured faster on 2 cores; otherwise the DataLoader path.
``true`` refuses to start, in one line, when the set cannot be made resident.

``[data] workers_per_gpu = "auto"`` gives each local process its share of the CPU cores,
less one for the process itself (:func:`auto_workers`), and turns on persistent workers and a
prefetch of 4 batches when that is more than 0.

The trainer calls :func:`build_data_path` once in its set-up.
"""
from __future__ import annotations

import os
from typing import Any

from ..errors import ConfigError
from .data import build_loader


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


def build_data_path(trainer: Any, memory: int | None = None) -> tuple[Any, Any, str]:
    """``(loader, sampler, description)`` for the trainer's training set.

    Args:
        trainer: the Trainer in its set-up (``config``, ``settings``, ``dataset``, ``device``,
            ``rank``, ``world_size`` are read).
        memory: bytes to measure the resident set against instead of the device's (tests).
    ``loader`` is a DataLoader or the batches of a ``selfsup_resident_data`` hook (already
    augmented: the trainer must not apply the dataset's device transform);
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
    """The plugins' resident path, or ``(None, why not)``; raises for a forced one that fails."""
    from .. import session as _session

    manager = getattr(trainer, "plugin_manager", None) or _session.plugin_manager()
    answer = manager.hook.selfsup_resident_data(runner=trainer, memory=memory)
    if isinstance(answer, tuple):
        return answer, None
    why = answer or "no installed plugin holds data on the device (selfsup-data does)"
    if mode is True:
        raise ConfigError(trainer.config.problem(("data", "resident"), f"{why}; set data.resident = \"auto\" or false"))
    return None, why


__all__ = ["auto_workers", "build_data_path"]
