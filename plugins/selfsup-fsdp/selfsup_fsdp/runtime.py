"""The ``fsdp2`` runtime (``[runner] distributed = "fsdp2"``): the algorithm sharded with FSDP2.

:data:`FSDP2` (the ``selfsup.runtimes`` entry point) shards the algorithm with
``torch.distributed.fsdp.fully_shard`` (parameters, gradients and optimizer state split over
the processes; each unit's full parameters are gathered only for its forward and backward) for
models whose replicas do not fit one device, e.g. ViT-L/H MAE. Units are the blocks of the
model: every element that holds parameters of an ``nn.ModuleList`` or ``nn.Sequential`` (a
ViT's transformer blocks, a ResNet's bottlenecks), searched from the top and not inside another
unit; the root takes the rest. ``[runner] activation_checkpointing = true`` recomputes each
unit's activations in the backward pass instead of keeping them
(``torch.distributed._composable.checkpoint``).

Algorithms that copy parameters between networks outside the forward pass (a momentum/EMA
target updated by ``momentum_update``: BYOL, MoCo, DINO-style teachers) need the full
parameters there and are refused with one line; an algorithm that does this safely on its
shards may declare ``fsdp_compatible = True``.

The trainer calls the parts of the core's runtime contract (``selfsup_core/engine/runtimes.py``)
this object has: ``check``, the call, ``after_wrap``, and the checkpoint parts of
:mod:`selfsup_fsdp.shards`.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from selfsup_core.api import Config, ConfigError, SelfSupError, dist

from . import shards
from .shards import is_sharded

RUNTIME_NAME = "fsdp2"


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


def sharding_units(model: nn.Module) -> list[nn.Module]:
    """The blocks :data:`FSDP2` shards (and checkpoints) one by one, outermost first."""
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


class FSDP2Runtime:
    """The core's runtime contract for FSDP2; :data:`FSDP2` is the registered instance."""

    def check(self, config: Config, settings: Any, model: nn.Module | type) -> None:
        """Called before the rendezvous (``model``: the algorithm's class) and before wrapping
        (the built algorithm): a one-line :class:`ConfigError` naming ``runner.distributed``
        when the algorithm needs unsharded parameters."""
        reason = needs_unsharded_parameters(model)
        if reason:
            raise ConfigError(config.problem(
                ("runner", "distributed"), f"'{RUNTIME_NAME}' cannot shard this model: {reason}; use distributed = 'ddp'"))

    def __call__(self, model: nn.Module, *, device: torch.device, settings: Any) -> nn.Module:
        """``model`` sharded in place with ``fully_shard`` and returned.

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

    @staticmethod
    def after_wrap(model: nn.Module, optimizer: torch.optim.Optimizer, names: Mapping[nn.Parameter, str]) -> None:
        """Point ``optimizer``'s parameter groups at ``model``'s current parameters.

        Called by the trainer right after the call (before the first step, so the optimizer has
        no state yet): ``fully_shard`` replaces every parameter by a sharded one of the same
        name, while the optimizer, built earlier, still holds the old ones. ``names`` maps the
        old parameters to their names."""
        now = dict(model.named_parameters())
        for group in optimizer.param_groups:
            group["params"] = [now.get(names.get(p, ""), p) for p in group["params"]]

    save_state = staticmethod(shards.save_shards)
    after_save = staticmethod(shards.prune_shards)
    load_state = staticmethod(shards.load_shards)


#: The ``fsdp2`` entry point of ``selfsup.runtimes``.
FSDP2 = FSDP2Runtime()

__all__ = ["FSDP2", "FSDP2Runtime", "RUNTIME_NAME", "is_sharded", "needs_unsharded_parameters", "sharding_units"]
