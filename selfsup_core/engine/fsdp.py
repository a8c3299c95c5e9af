"""FSDP2: the ``fsdp2`` runtime (``[runner] distributed = "fsdp2"``) and its sharded checkpoints.

:func:`fsdp2_runtime` shards the algorithm with ``torch.distributed.fsdp.fully_shard``
(parameters, gradients and optimizer state split over the processes; each unit's full
parameters are gathered only for its forward and backward) for models whose replicas do not
fit one device, e.g. ViT-L/H MAE. Units are the blocks of the model: every element that holds
parameters of an ``nn.ModuleList`` or ``nn.Sequential`` (a ViT's transformer blocks, a ResNet's
bottlenecks), searched from the top and not inside another unit; the root takes the rest.
``[runner] activation_checkpointing = true`` recomputes each unit's activations in the
backward pass instead of keeping them (``torch.distributed._composable.checkpoint``).

Checkpoints of an fsdp2 run are sharded: every process writes its own shards with
``torch.distributed.checkpoint`` (DCP) to ``WORK_DIR/shards/iter_N/`` and ``latest.pth`` /
``epoch_N.pth`` keep everything else (meta, schedules, RNG states, hooks) with
``meta["sharded"] = "shards/iter_N"`` and empty ``state_dict`` / ``optimizer`` entries. DCP
reshards on load, so a run may resume on another number of processes (tested here: the same number). Multi-node runs need a
work dir on a file system every node sees. ``python -m torch.distributed.checkpoint.format_utils
dcp_to_torch WORK_DIR/shards/iter_N weights.pth`` writes the consolidated weights.

Algorithms that copy parameters between networks outside the forward pass (a momentum/EMA
target updated by ``momentum_update``: BYOL, MoCo, DINO-style teachers) need the full
parameters there and are refused with one line; an algorithm that does this safely on its
shards may declare ``fsdp_compatible = True``.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import Config
from ..errors import ConfigError, SelfSupError
from . import checkpoint as ckpt
from . import dist

RUNTIME_NAME = "fsdp2"
SHARDS_DIR = "shards"


def needs_unsharded_parameters(model: nn.Module | type) -> str | None:
    """Why ``model`` cannot train under fsdp2 (None: it can). Receives the built algorithm, or
    its class (checked before the rendezvous)."""
    if getattr(model, "fsdp_compatible", False):
        return None
    if callable(getattr(model, "momentum_update", None)):
        name = model.__name__ if isinstance(model, type) else type(model).__name__
        return (f"{name} copies parameters into its momentum (EMA) network outside the forward "
                "pass (momentum_update), which needs unsharded parameters")
    return None


def check_runtime_fits(config: Config, settings: Any, model: nn.Module | type) -> dict[nn.Parameter, str]:
    """Called by the trainer before it wraps ``model`` for a multi-process run: raises a one-line
    :class:`ConfigError` (file, ``runner.distributed``, fix) when ``[runner] distributed`` is
    fsdp2 and the algorithm needs unsharded parameters. Returns ``model``'s parameters and their
    names, for :func:`rebind_optimizer` after the wrapping."""
    if settings.distributed == RUNTIME_NAME:
        reason = needs_unsharded_parameters(model)
        if reason:
            raise ConfigError(config.problem(
                ("runner", "distributed"), f"'{RUNTIME_NAME}' cannot shard this model: {reason}; use distributed = 'ddp'"))
    return {} if isinstance(model, type) else {parameter: name for name, parameter in model.named_parameters()}


def rebind_optimizer(optimizer: torch.optim.Optimizer, before: dict[nn.Parameter, str], model: nn.Module) -> None:
    """Point ``optimizer``'s parameter groups at ``model``'s current parameters.

    Called by the trainer right after the runtime wrapped ``model`` (before the first step, so
    the optimizer has no state yet): ``fully_shard`` replaces every parameter by a sharded one
    of the same name, while the optimizer, built earlier, still holds the old ones. ``before``
    is what :func:`check_runtime_fits` returned. A runtime that keeps the parameters (DDP)
    leaves the optimizer as it is."""
    now = dict(model.named_parameters())
    for group in optimizer.param_groups:
        group["params"] = [now.get(before.get(p, ""), p) for p in group["params"]]


def sharding_units(model: nn.Module) -> list[nn.Module]:
    """The blocks :func:`fsdp2_runtime` shards (and checkpoints) one by one, outermost first."""
    units: list[nn.Module] = []

    def visit(module: nn.Module) -> None:
        container = isinstance(module, (nn.ModuleList, nn.Sequential))
        for child in module.children():
            if container and next(child.parameters(), None) is not None:
                units.append(child)
            else:
                visit(child)

    visit(model)
    return units


def fsdp2_runtime(model: nn.Module, *, device: torch.device, settings: Any) -> nn.Module:
    """The ``fsdp2`` runtime: ``model`` sharded in place with ``fully_shard`` and returned.

    Called once by the trainer when a multi-process run has ``[runner] distributed =
    "fsdp2"``, after the model is on ``device``. ``settings.activation_checkpointing`` adds
    activation checkpointing to every unit."""
    reason = needs_unsharded_parameters(model)
    if reason:
        raise SelfSupError(f"runner.distributed: '{RUNTIME_NAME}' cannot shard this model: {reason}; use 'ddp'")
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    units = sharding_units(model)
    if getattr(settings, "activation_checkpointing", False):
        from torch.distributed._composable import checkpoint as activation_checkpoint

        for unit in units:
            activation_checkpoint(unit)
    for unit in units:
        fully_shard(unit, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


# -- sharded checkpoints ------------------------------------------------------------------------
def is_sharded(model: Any) -> bool:
    """Whether ``model`` was sharded by :func:`fsdp2_runtime`."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def save_shards(trainer: Any, state: dict[str, Any]) -> dict[str, Any]:
    """Called by ``Trainer.save_checkpoint`` on every process with the state it is about to
    save. For a sharded model: writes the model's and optimizer's shards (collective) to
    ``shards/iter_N`` of the work dir and returns ``state`` pointing there, with empty
    ``state_dict`` / ``optimizer``; otherwise returns ``state`` unchanged."""
    if not is_sharded(trainer.model):
        return state
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    name = f"{SHARDS_DIR}/iter_{trainer.iter}"
    final = trainer.work_dir / name
    partial = final.with_name(final.name + ".partial")
    if dist.is_main_process():
        shutil.rmtree(partial, ignore_errors=True)
    dist.barrier()
    model_state, optim_state = get_state_dict(trainer.model, trainer.optimizer)
    dcp.save({"model": model_state, "optimizer": optim_state}, checkpoint_id=partial)
    dist.barrier()
    if dist.is_main_process():  # complete on disk before latest.pth names it
        shutil.rmtree(final, ignore_errors=True)
        partial.rename(final)
    dist.barrier()
    return {**state, "state_dict": {}, "optimizer": {}, "meta": {**state["meta"], "sharded": name}}


def prune_shards(work_dir: Path) -> None:
    """Remove the shard folders no checkpoint of ``work_dir`` names any more (main process,
    after a save)."""
    folder = Path(work_dir) / SHARDS_DIR
    if not folder.is_dir():
        return
    named = set()
    for path in [Path(work_dir) / ckpt.LATEST, *ckpt.list_epoch_checkpoints(work_dir)]:
        if path.is_file():
            meta = torch.load(path, map_location="cpu", weights_only=True).get("meta", {})
            named.add(meta.get("sharded"))
    for shard in folder.iterdir():
        if f"{SHARDS_DIR}/{shard.name}" not in named:
            shutil.rmtree(shard, ignore_errors=True)


def load_shards(trainer: Any, state: dict[str, Any], path: Path) -> dict[str, Any]:
    """Called by ``Trainer._load_checkpoint`` on every process with the loaded ``state`` of
    ``path``. A sharded checkpoint is read into the sharded model and optimizer (DCP reshards
    to this run's processes) and ``state`` is returned with their current state dicts, so the
    trainer's own loading is a no-op. Mixing sharded and full checkpoints and runtimes is
    refused in one line."""
    sharded = state.get("meta", {}).get("sharded")
    if not is_sharded(trainer.model):
        if sharded:
            raise ckpt.CheckpointError(
                f"checkpoint {path} holds FSDP2 shards ({sharded}); resume it with [runner] distributed = "
                f"'{RUNTIME_NAME}' on several processes, or consolidate it with python -m "
                f"torch.distributed.checkpoint.format_utils dcp_to_torch")
        return state
    if not sharded:
        raise ckpt.CheckpointError(
            f"checkpoint {path} holds full weights, not FSDP2 shards; resume it with [runner] distributed = 'ddp'")
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    folder = Path(path).parent / sharded
    if not (folder / ".metadata").is_file():
        raise ckpt.CheckpointError(f"checkpoint {path} names shards {folder} that are missing or incomplete; "
                                   "resume from another checkpoint (epoch_*.pth)")
    model_state, optim_state = get_state_dict(trainer.model, trainer.optimizer)
    target = {"model": model_state, "optimizer": optim_state}
    dcp.load(target, checkpoint_id=folder)
    set_state_dict(trainer.model, trainer.optimizer, model_state_dict=target["model"],
                   optim_state_dict=target["optimizer"])
    return {**state, "state_dict": trainer.model.state_dict(), "optimizer": trainer.optimizer.state_dict()}


__all__ = ["RUNTIME_NAME", "check_runtime_fits", "rebind_optimizer", "fsdp2_runtime", "is_sharded", "load_shards",
           "needs_unsharded_parameters", "prune_shards", "save_shards", "sharding_units"]
