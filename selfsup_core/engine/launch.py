"""Joining a multi-process job: the launcher's environment, the batch split, the rendezvous.

:func:`init_distributed` is what the trainer calls first. It

1. reads a Slurm task's environment into torch's env:// variables (:mod:`.slurm`) when the
   process was started by ``srun`` and not by ``torchrun``;
2. splits ``[data] global_batch_size`` (samples per optimizer step, over every process and
   accumulation step) into the per-process ``samples_per_gpu``, refusing a world size that does
   not divide it, before any process waits for another;
3. sets up the process group with ``[runner] dist_timeout`` seconds for the rendezvous and for
   every collective, so a process whose peers never arrive (or died) stops with one line.
"""
from __future__ import annotations

import os
from typing import Any

from ..config import Config
from ..errors import ConfigError, SelfSupError
from . import dist, slurm


class RendezvousError(SelfSupError):
    """The processes of a job did not all meet within ``[runner] dist_timeout``."""


def world_size_from_env() -> int:
    """The world size the launcher announced (1 when none did)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) if dist.launched_by_torchrun() else 1
    except ValueError:
        return 1


def per_process_batch(config: Config, global_batch: int | None, samples_per_gpu: int, world_size: int,
                      accumulate: int) -> int:
    """The batch each process loads per iteration.

    Receives the config (for error messages), ``[data] global_batch_size`` (None: not set),
    ``samples_per_gpu`` (per process, used when there is no global batch), the world size and
    ``accumulate_steps``. With a global batch ``G``, returns ``G / (world_size * accumulate)``;
    raises a one-line :class:`ConfigError` naming ``data.global_batch_size`` when that is not a
    whole number."""
    if global_batch is None:
        return samples_per_gpu
    parts = world_size * accumulate
    if global_batch % parts:
        lower = max(parts, global_batch - global_batch % parts)
        raise ConfigError(config.problem(
            ("data", "global_batch_size"),
            f"{global_batch} samples per optimizer step do not split over {world_size} processes x {accumulate} "
            f"accumulation steps; use a multiple of {parts} (e.g. {lower} or {lower + parts}), or set "
            f"[data] samples_per_gpu (per process) instead"))
    return global_batch // parts


def init_distributed(config: Config, settings: Any, device_type: str, registries: Any = None) -> dist.DistInfo:
    """Set up this process's place in the job; called once by the trainer before anything is built.

    Receives the run's config, its :class:`~selfsup_core.engine.settings.RunSettings` (whose
    ``samples_per_gpu`` is set from ``global_batch_size`` here), the device type (picks the
    backend) and the trainer's registries (for the runtime's ``check`` of the algorithm before
    the rendezvous, :func:`.runtimes.check_before_rendezvous`). Returns the
    :class:`~selfsup_core.engine.dist.DistInfo`. A rendezvous that does not complete within
    ``[runner] dist_timeout`` raises :class:`RendezvousError` (one line)."""
    slurm.export_torch_env()
    world_size = world_size_from_env()
    settings.samples_per_gpu = per_process_batch(config, settings.global_batch_size, settings.samples_per_gpu,
                                                 world_size, settings.accumulate_steps)
    if world_size > 1:
        from .runtimes import check_before_rendezvous

        check_before_rendezvous(config, settings, registries)
    timeout = settings.dist_timeout
    try:
        if dist.launched_by_torchrun() and world_size > 1:
            join_process_group(device_type, timeout)
        return dist.init_from_env(device_type)  # the group is up: rank, local rank, world size
    except RuntimeError as exc:  # DistStoreError, DistNetworkError, gloo's connect errors
        raise rendezvous_error(config, timeout, exc) from exc


def join_process_group(device_type: str, timeout: float) -> None:
    """Set up the default process group from the env:// variables, with ``timeout`` seconds for
    the rendezvous and every collective; called by :func:`init_distributed`.

    The group's keys live under ``selfsup/attempt_N/`` of the rendezvous store, ``N`` being
    torchrun's ``TORCHELASTIC_RESTART_COUNT``: torchrun keeps one store across restarts, and a
    restarted process must not read the address a dead process of the attempt before left there
    (gloo then fails with "Connection refused")."""
    import datetime

    import torch
    import torch.distributed as torch_dist

    if torch_dist.is_initialized():
        return
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if device_type == "cuda":
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    wait = datetime.timedelta(seconds=timeout)
    store, _, _ = next(torch_dist.rendezvous("env://", rank=rank, world_size=world_size, timeout=wait))
    store = torch_dist.PrefixStore(f"selfsup/attempt_{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/", store)
    torch_dist.init_process_group("nccl" if device_type == "cuda" else "gloo", store=store, rank=rank,
                                  world_size=world_size, timeout=wait)


def rendezvous_error(config: Config, timeout: float, exc: BaseException) -> RendezvousError:
    """The one line for a process group that could not be set up (``exc`` says why)."""
    where = f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')}"
    detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    who = f"process {os.environ.get('RANK')} of {os.environ.get('WORLD_SIZE')}"
    timed_out = "timed out" in detail.lower()
    what = (f"{who} did not meet the others at {where} within {timeout:g} s" if timed_out
            else f"{who} could not join the others at {where}")
    return RendezvousError(
        f"{config.filename}: runner.dist_timeout: {what} ({detail}); start every process of the job (srun --ntasks, "
        f"torchrun --nnodes on each node) with the same MASTER_ADDR/MASTER_PORT"
        + (", or raise [runner] dist_timeout" if timed_out else ""))


__all__ = ["RendezvousError", "init_distributed", "join_process_group", "rendezvous_error", "per_process_batch", "world_size_from_env"]
