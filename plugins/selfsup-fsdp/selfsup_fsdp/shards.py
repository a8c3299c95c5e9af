"""Sharded checkpoints of an fsdp2 run: the checkpoint parts of the runtime contract.

Every process writes its own shards with ``torch.distributed.checkpoint`` (DCP) to
``WORK_DIR/shards/iter_N/``; ``latest.pth`` / ``epoch_N.pth`` keep everything else (meta,
schedules, RNG states, hooks) with empty ``state_dict`` / ``optimizer`` entries and
``meta["sharded"] = "shards/iter_N"``, plus the core's ``meta["runtime_state"]`` /
``meta["runtime_convert"]`` through which a run without fsdp2 (and ``export``, ``eval``,
``init_cfg`` weight loading) refuses the file in one line that names the fix. DCP reshards on
load, so a run may resume on another number of processes (tested: the same number).
Multi-node runs need a work dir on a file system every node sees. ``python -m
torch.distributed.checkpoint.format_utils dcp_to_torch WORK_DIR/shards/iter_N weights.pth``
writes the consolidated weights.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch

from selfsup_core.api import LATEST_CHECKPOINT, CheckpointError, dist, list_epoch_checkpoints

SHARDS_DIR = "shards"
CONSOLIDATE = "python -m torch.distributed.checkpoint.format_utils dcp_to_torch"


def is_sharded(model: Any) -> bool:
    """Whether ``model`` was sharded by ``fully_shard``."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def shard_meta(name: str) -> dict[str, str]:
    """The ``meta`` entries of a checkpoint whose weights are in the shard folder ``name``
    (relative to the checkpoint's folder)."""
    return {"sharded": name, "runtime_state": f"FSDP2 shards ({name})",
            "runtime_convert": f"{CONSOLIDATE} {{dir}}/{name} weights.pth"}


def save_shards(runner: Any, state: dict[str, Any]) -> dict[str, Any]:
    """The contract's ``save_state``: called by ``Trainer.save_checkpoint`` on every process
    with the state it is about to save. For a sharded model: writes the model's and optimizer's
    shards (collective) to ``shards/iter_N`` of the work dir and returns ``state`` pointing
    there (:func:`shard_meta`), with empty ``state_dict`` / ``optimizer``; otherwise returns
    ``state`` unchanged."""
    if not is_sharded(runner.model):
        return state
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    name = f"{SHARDS_DIR}/iter_{runner.iter}"
    final = Path(runner.work_dir) / name
    partial = final.with_name(final.name + ".partial")
    if dist.is_main_process():
        shutil.rmtree(partial, ignore_errors=True)
    dist.barrier()
    model_state, optim_state = get_state_dict(runner.model, runner.optimizer)
    dcp.save({"model": model_state, "optimizer": optim_state}, checkpoint_id=partial)
    dist.barrier()
    if dist.is_main_process():  # complete on disk before latest.pth names it
        shutil.rmtree(final, ignore_errors=True)
        partial.rename(final)
    dist.barrier()
    return {**state, "state_dict": {}, "optimizer": {}, "meta": {**state["meta"], **shard_meta(name)}}


def prune_shards(work_dir: Path) -> None:
    """The contract's ``after_save`` (main process, after a checkpoint was written): remove the
    shard folders no checkpoint of ``work_dir`` names any more."""
    folder = Path(work_dir) / SHARDS_DIR
    if not folder.is_dir():
        return
    named = set()
    for path in [Path(work_dir) / LATEST_CHECKPOINT, *list_epoch_checkpoints(work_dir)]:
        if path.is_file():
            meta = torch.load(path, map_location="cpu", weights_only=True).get("meta", {})
            named.add(meta.get("sharded"))
    for shard in folder.iterdir():
        if f"{SHARDS_DIR}/{shard.name}" not in named:
            shutil.rmtree(shard, ignore_errors=True)


def load_shards(runner: Any, state: dict[str, Any], path: Path) -> dict[str, Any]:
    """The contract's ``load_state``: called by ``Trainer._load_checkpoint`` on every process of
    an fsdp2 run with the loaded ``state`` of ``path`` (the core has already refused shards of
    another runtime). The shards are read into the sharded model and optimizer (DCP reshards to
    this run's processes) and ``state`` is returned with their current state dicts, so the
    trainer's own loading is a no-op. A full checkpoint is refused in one line."""
    sharded = state.get("meta", {}).get("sharded")
    if not sharded:
        raise CheckpointError(
            f"checkpoint {path} holds full weights, not FSDP2 shards; resume it with [runner] distributed = 'ddp'")
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    folder = Path(path).parent / sharded
    if not (folder / ".metadata").is_file():
        raise CheckpointError(f"checkpoint {path} names shards {folder} that are missing or incomplete; "
                              "resume from another checkpoint (epoch_*.pth)")
    model_state, optim_state = get_state_dict(runner.model, runner.optimizer)
    target = {"model": model_state, "optimizer": optim_state}
    dcp.load(target, checkpoint_id=folder)
    set_state_dict(runner.model, runner.optimizer, model_state_dict=target["model"],
                   optim_state_dict=target["optimizer"])
    return {**state, "state_dict": runner.model.state_dict(), "optimizer": runner.optimizer.state_dict()}


__all__ = ["CONSOLIDATE", "SHARDS_DIR", "is_sharded", "load_shards", "prune_shards", "save_shards", "shard_meta"]
