"""selfsup-data's ``selfsup_resident_data`` hook: the training set held on the device.

The trainer asks for it when ``[data] resident`` is true or ``"auto"`` (see
``selfsup_core.engine.data_path``). The set is taken when its pipeline has a batched
implementation (:func:`selfsup_data.resident.plan_resident`) and its decoded uint8 images fit
in ``[data] resident_memory_share`` of the device's memory (CUDA: its total memory; CPU: the
RAM available now); otherwise the answer is a one-line reason.
"""
from __future__ import annotations

import os
from typing import Any

from selfsup_core.api import hookimpl

DEFAULT_MEMORY_SHARE = 0.25


def available_memory(device: Any) -> int:
    """Bytes the resident set may be measured against: a CUDA device's total memory, or the
    RAM available now (``MemAvailable`` of /proc/meminfo, else free physical pages)."""
    if device.type == "cuda":
        import torch

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


@hookimpl
def selfsup_resident_data(runner: Any, memory: int | None) -> tuple[Any, Any, str] | str:
    """``(batches, sampler, description)`` for a training set that fits, else why not."""
    import torch
    from selfsup_core.api import SeededSampler  # here: importing this module must not import torch

    from .resident import NotResident, ResidentBatches, decode_all, image_shape, plan_resident

    settings, dataset, device = runner.settings, runner.dataset, runner.device
    try:
        plan = plan_resident(dataset)
        n, c, h, w = image_shape(dataset)
    except NotResident as exc:
        return str(exc)
    size = n * c * h * w
    share = getattr(settings, "resident_memory_share", DEFAULT_MEMORY_SHARE)
    available = available_memory(device) if memory is None else memory
    if size > share * available:
        return (f"the training set {_dataset_name(dataset)} is {_mb(size)} as uint8 ({n} x {c}x{h}x{w}), more "
                f"than resident_memory_share = {share:g} of the {_mb(available)} available on {device}")
    try:
        images = decode_all(dataset)
    except NotResident as exc:
        return str(exc)
    labels = torch.as_tensor(getattr(dataset, "gt_labels", [-1] * n), dtype=torch.long)
    sampler = SeededSampler(n, num_replicas=runner.world_size, rank=runner.rank, shuffle=True, seed=settings.seed,
                            drop_last=settings.drop_last, replace=settings.replace)
    batches = ResidentBatches(plan.to(device), images.to(device), labels, sampler, settings.samples_per_gpu,
                              settings.drop_last)
    return batches, sampler, f"resident on {device} ({_mb(size)} uint8)"
