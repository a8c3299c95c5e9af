"""Distributed runtimes: how a model is wrapped when a run has several processes.

A runtime is a component of kind ``runtimes`` (entry-point group ``selfsup.runtimes``), chosen
by ``[runner] distributed = "<name>"`` (default ``"ddp"``). It is called once, after the model
is on its device and before the first step, only when ``torch.distributed`` is initialised::

    wrapped = Runtime(model, device=device, settings=settings)

and returns the module the trainer calls for the forward pass (``wrapped(mode="train",
...)``). When that module has ``no_sync()`` (as DDP does), gradient accumulation skips the
cross-process reduction on the iterations that do not step. Another engine (FSDP2, ...) is a
plugin that registers its own runtime; the trainer does not change.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn


class DDPRuntime(nn.parallel.DistributedDataParallel):
    """``torch.nn.parallel.DistributedDataParallel`` over the model (the default runtime).

    Args:
        model: the algorithm, on its device.
        device: the process's device (CUDA: its index becomes ``device_ids``).
        settings: the run's :class:`~selfsup_core.engine.settings.RunSettings`
            (``find_unused_parameters`` is read from it).
    """

    def __init__(self, model: nn.Module, *, device: torch.device, settings: Any) -> None:
        super().__init__(
            model,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=bool(getattr(settings, "find_unused_parameters", False)),
        )


__all__ = ["DDPRuntime"]
