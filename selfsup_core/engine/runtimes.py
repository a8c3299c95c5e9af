"""Distributed runtimes: how a model is wrapped when a run has several processes.

A runtime is a component of kind ``runtimes`` (entry-point group ``selfsup.runtimes``), chosen
by ``[runner] distributed = "<name>"`` (default ``"ddp"``); the trainer uses it only when
``torch.distributed`` is initialised (a single process runs the bare model and loads and writes
plain checkpoints). The registered object is a class or any callable; besides being callable it
may have the optional attributes below (class or static methods, or methods of an instance
registered as the entry point). The trainer calls them through :class:`ActiveRuntime` in this
order, and a missing one means "nothing to do" (:class:`DDPRuntime` has none of them):

``check(config, settings, model) -> None``
    Called on every process before anything waits for another process, with the algorithm's
    *class* (from ``[model] type``, in :func:`~selfsup_core.engine.launch.init_distributed`),
    and again with the built algorithm just before wrapping it. Raises a one-line
    :class:`~selfsup_core.errors.ConfigError` (``config.problem(("runner", "distributed"),
    "...; fix")``) when the runtime cannot run this algorithm.
``runtime(model, *, device, settings) -> nn.Module``
    The call itself, once, after the model is on ``device``, its optimizer is built and
    ``torch.compile`` (if any) applied: returns the module the trainer calls for the forward
    pass (``wrapped(mode="train", ...)``). ``settings`` is the run's
    :class:`~selfsup_core.engine.settings.RunSettings` (``find_unused_parameters``,
    ``activation_checkpointing``, ...). When the returned module has ``no_sync()`` (as DDP
    does), gradient accumulation skips the cross-process reduction on the iterations that do
    not step.
``after_wrap(model, optimizer, names) -> None``
    Right after the call, before the first step and before a checkpoint is loaded. ``names``
    maps each parameter the model had before the call to its name: a runtime that replaced the
    parameters (FSDP2's ``fully_shard`` does) points ``optimizer``'s groups at the new ones.
``save_state(runner, state) -> state``
    In ``Trainer.save_checkpoint``, on every process (collectives are allowed), with the
    state about to be written (``meta``, ``state_dict``, ``optimizer``, ...); returns the state
    the main process writes. A runtime that stores weights elsewhere (e.g. one shard per
    process) sets ``meta["runtime_state"]`` to a short phrase naming what the file holds
    instead (``"FSDP2 shards (shards/iter_4)"``) and may set ``meta["runtime_convert"]`` to
    the command that turns it into plain weights (``{dir}`` stands for the checkpoint's
    folder); the trainer then records the runtime's name in ``meta["runtime"]``.
``after_save(work_dir) -> None``
    On the main process after a checkpoint (and the pruning of old ``epoch_N.pth``) was
    written: e.g. remove the runtime's files no checkpoint names any more.
``load_state(runner, state, path) -> state``
    In ``Trainer._load_checkpoint``, on every process, with the loaded state of ``path``;
    returns the state the trainer loads into the model, optimizer, schedules and hooks (a
    runtime that restores the model and optimizer itself returns their current state dicts).
    Before it is called, a checkpoint whose ``meta["runtime_state"]`` was written by another
    runtime (or read by a single process) is refused in one line (:func:`check_checkpoint`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

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


def check_checkpoint(meta: Mapping[str, Any], path: str | Path, runtime: str | None) -> None:
    """Refuse, in one line (:class:`~selfsup_core.engine.checkpoint.CheckpointError`), a
    checkpoint whose ``meta`` says a runtime stored its weights elsewhere
    (``meta["runtime_state"]``) when this run's runtime (``runtime``; None: a single process)
    is not the one that wrote it (``meta["runtime"]``). Called before a runtime's ``load_state``."""
    held = meta.get("runtime_state")
    if not held or (runtime is not None and runtime == meta.get("runtime")):
        return
    from .checkpoint import CheckpointError

    owner = meta.get("runtime") or "?"
    convert = meta.get("runtime_convert")
    raise CheckpointError(
        f"checkpoint {path} holds {held}; resume it with [runner] distributed = '{owner}' on several processes"
        + (f", or consolidate it with {str(convert).replace('{dir}', str(Path(path).parent))}" if convert else ""))


class ActiveRuntime:
    """The runtime of this run (``name`` None: a single process, nothing wrapped), with the
    optional parts of the contract (module docstring) called when the runtime has them.
    Built by the trainer after the process group is up."""

    def __init__(self, name: str | None, runtime: Any = None) -> None:
        self.name = name if runtime is not None else None
        self.runtime = runtime

    def _part(self, attribute: str) -> Any:
        return getattr(self.runtime, attribute, None) if self.runtime is not None else None

    def check(self, config: Any, settings: Any, model: Any) -> None:
        """The runtime's ``check`` (the algorithm's class before the rendezvous, the model before wrapping)."""
        check = self._part("check")
        if check is not None:
            check(config, settings, model)

    def wrap(self, model: nn.Module, optimizer: torch.optim.Optimizer, *, config: Any, settings: Any,
             device: torch.device) -> nn.Module:
        """``check``, the call and ``after_wrap``; returns the module the trainer calls
        (``model`` itself when there is no runtime)."""
        if self.runtime is None:
            return model
        self.check(config, settings, model)
        names = {parameter: name for name, parameter in model.named_parameters()}
        wrapped = self.runtime(model, device=device, settings=settings)
        after_wrap = self._part("after_wrap")
        if after_wrap is not None:
            after_wrap(model, optimizer, names)
        return wrapped

    def save_state(self, runner: Any, state: dict[str, Any]) -> dict[str, Any]:
        """The state the main process writes (every process calls this)."""
        save_state = self._part("save_state")
        if save_state is None:
            return state
        state = save_state(runner, state)
        if state.get("meta", {}).get("runtime_state"):
            state = {**state, "meta": {**state["meta"], "runtime": self.name}}
        return state

    def after_save(self, work_dir: Path) -> None:
        """The runtime's ``after_save`` (main process, after a checkpoint was written)."""
        after_save = self._part("after_save")
        if after_save is not None:
            after_save(Path(work_dir))

    def load_state(self, runner: Any, state: dict[str, Any], path: Path) -> dict[str, Any]:
        """:func:`check_checkpoint`, then the runtime's ``load_state``; returns the state to load."""
        meta = state.get("meta")
        check_checkpoint(meta if isinstance(meta, Mapping) else {}, path, self.name)
        load_state = self._part("load_state")
        return state if load_state is None else load_state(runner, state, path)


def active_runtime(registries: Any, name: str | None) -> ActiveRuntime:
    """The :class:`ActiveRuntime` named ``name`` (``[runner] distributed``; None: a single
    process) from ``registries["runtimes"]``."""
    if name is None:
        return ActiveRuntime(None)
    return ActiveRuntime(name, registries["runtimes"].lookup(name).load())


def check_before_rendezvous(config: Any, settings: Any, registries: Any) -> None:
    """Called by :func:`~selfsup_core.engine.launch.init_distributed` when the job has several
    processes, before any of them waits for another: the runtime's ``check`` with the
    algorithm's class. A type (or runtime) that does not resolve is left to the build's errors."""
    if registries is None:
        return
    try:
        runtime = registries["runtimes"].lookup(settings.distributed).load()
    except Exception:  # noqa: BLE001 - read_settings already named an unknown runtime
        return
    if getattr(runtime, "check", None) is None:
        return
    model = config.data.get("model")
    try:
        factory = registries["algorithms"].lookup(model["type"]).load()
    except Exception:  # noqa: BLE001 - reported, with its key, when the model is built
        return
    runtime.check(config, settings, factory)


__all__ = ["ActiveRuntime", "DDPRuntime", "active_runtime", "check_before_rendezvous", "check_checkpoint"]
