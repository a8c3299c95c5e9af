"""The hooks selfsup calls, as pluggy specifications (project name ``"selfsup"``).

A plugin is any object or module with functions named after these specs. Install it with an
entry point in the ``selfsup.plugins`` group (it is then registered for every run), or
configure it as a trainer hook in a ``[[hooks]]`` table (registered for that run only).
Marking implementations with :data:`hookimpl` is optional; it is needed only for pluggy's
options (``tryfirst``, ``trylast``, ``wrapper``).

Call order: implementations of one hook run from the most recently registered plugin to the
first one; ``tryfirst=True`` moves an implementation before all others and ``trylast=True``
after them. Plugins from entry points are registered first (sorted by entry-point name),
then the run's ``[[hooks]]`` in reverse config order, so that configured hooks run first and
in the order the config lists them.

Lifecycle of a run: ``selfsup_before_run``; for each epoch ``selfsup_before_epoch``, for each
iteration ``selfsup_before_iter``, the forward pass, ``selfsup_before_backward``, the backward
pass, ``selfsup_after_backward``, and on iterations that step the optimizer
``selfsup_before_optimizer_step`` and the step, then ``selfsup_after_iter``; then
``selfsup_after_epoch``; finally ``selfsup_after_run``. If an exception escapes the loop, ``selfsup_on_exception`` is
called instead of ``selfsup_after_run`` and the exception is re-raised.

Names must not import heavy modules at import time: plugins are loaded by ``selfsup-run
list`` and ``--help``, which do not import torch.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

import pluggy

if TYPE_CHECKING:
    import argparse
    from pathlib import Path

    import torch

    from .build import Builder
    from .config import Config
    from .sections import ConfigSection

hookspec = pluggy.HookspecMarker("selfsup")
hookimpl = pluggy.HookimplMarker("selfsup")


class Register(Protocol):
    """The callback ``selfsup_register_components`` receives."""

    def __call__(self, kind: str, name: str, obj: Any) -> None:
        """Provide component ``name`` of ``kind`` (``"backbones"``, ``"algorithms"``, ...).

        ``obj`` is the class or factory, or a ``"package.module:attr"`` string imported only
        when a config uses the name.
        """


class Runner(Protocol):
    """What hooks receive as ``runner``: the running :class:`~selfsup_core.engine.trainer.Trainer`.

    Counters are 0-based: ``epoch`` is the epoch running (or just ended, in
    ``selfsup_after_epoch``), ``iter`` the global iteration, ``inner_iter`` the iteration
    within the epoch. ``model`` is the algorithm unwrapped from any distributed wrapper.
    """

    config: Config
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    device: torch.device
    work_dir: Path
    epoch: int
    iter: int
    inner_iter: int
    max_epochs: int
    iters_per_epoch: int
    rank: int
    world_size: int
    is_update_step: bool

    @property
    def max_iters(self) -> int:
        """Iterations of the whole run."""

    def log_metrics(self, record: dict[str, Any]) -> None:
        """Append ``record`` to the run's ``metrics.jsonl`` (main process only)."""


@hookspec
def selfsup_register_components(register: Register) -> None:
    """Register components in bulk, e.g. one backbone per variant of a model family.

    Called once per process, the first time a registry is used, for every plugin installed
    in ``selfsup.plugins``. The components are attributed to the plugin's distribution and
    take part in duplicate detection exactly like entry-point components. For a fixed set of
    names, prefer plain entry points: they are listed without importing the plugin.
    """


@hookspec
def selfsup_register_commands(commands: argparse._SubParsersAction) -> None:
    """Add sub-commands to ``selfsup-run`` (they appear in ``selfsup-run --help``).

    Receives argparse's sub-parser collection; add a command with
    ``parser = commands.add_parser(name, help=...)``, declare its arguments, and set the
    function that runs it: ``parser.set_defaults(selfsup_run=run)`` where
    ``run(args: argparse.Namespace) -> int`` returns the exit status and raises
    :class:`~selfsup_core.errors.SelfSupError` for a user error (printed as one line, exit 2).
    Called every time the command line is parsed, ``--help`` included: import nothing heavy
    here, import the implementation inside ``run``. ``selfsup_core.api.add_config_arguments``
    adds the usual ``CONFIG --cfg-options ... --allow-import-paths`` arguments.
    """


@hookspec
def selfsup_config_sections() -> Sequence[ConfigSection]:
    """Declare the top-level config sections this plugin reads (``[evaluation]`` for selfsup-eval).

    Receives nothing; returns :class:`~selfsup_core.api.ConfigSection` objects: the name, a
    one-line description, an optional ``check(config)`` that raises one ``ConfigError`` for
    the section's problems, and the section's keys that hold component tables. Called
    whenever a config is validated (``selfsup-run CONFIG``, ``--check``, ``show-config``,
    a :class:`~selfsup_core.engine.trainer.Trainer` built from Python), possibly several
    times per process: return the same declarations each time and import nothing heavy.
    A top-level key that neither the core nor a plugin declares is an error, so without
    this hook a plugin's section is refused as an unknown top-level key.
    """


@hookspec
def selfsup_run_hooks(config: Config, builder: Builder) -> Sequence[tuple[str, Any]] | None:
    """Contribute trainer hooks to a run, e.g. from the plugin's own config section
    (selfsup-eval's online evaluation from ``[evaluation] interval``).

    Receives the run's prepared ``config`` and the :class:`~selfsup_core.api.Builder` the
    trainer builds its components with (``builder.build(table, kind, path)``). Called once
    per :class:`~selfsup_core.engine.trainer.Trainer` run, after the model, the training
    dataset and the ``[[hooks]]`` are built and before the model moves to its device.
    Returns ``(name, hook)`` pairs (or None): each hook is registered for this run after the
    configured ``[[hooks]]`` (so it sees an epoch's final state) and, when it has
    ``state_dict``/``load_state_dict``, saved under ``name`` in checkpoints and restored on
    resume; names must be unique within a run. Raise ``ConfigError`` for a bad config: the
    run then stops before its first epoch.
    """


@hookspec
def selfsup_process_config(config: Config) -> None:
    """Adjust a loaded config in place before it is validated and built.

    Receives the :class:`~selfsup_core.config.Config` after ``_base_`` inheritance and
    command-line overrides are applied. Use ``config.set(path, value, origin=...)`` so that
    errors about a changed key point at the plugin that changed it.
    """


@hookspec(firstresult=True)
def selfsup_resolve_checkpoint(uri: str) -> str | None:
    """Turn a checkpoint reference such as ``"torchvision://resnet50"`` into a local path.

    Called for ``init_cfg`` ``Pretrained`` checkpoints and ``--resume`` values that are not
    existing files. Return the path, or ``None`` to let the next plugin try; the first
    non-``None`` answer wins.
    """


@hookspec
def selfsup_before_run(runner: Runner) -> None:
    """Called once after the model, data and optimizer are built, before the first epoch
    (also when resuming). ``runner`` exposes ``model``, ``optimizer``, ``epoch``, ``iter``,
    ``max_epochs``, ``work_dir`` and ``config``."""


@hookspec
def selfsup_after_run(runner: Runner) -> None:
    """Called once after the last epoch, when training finished without an exception."""


@hookspec
def selfsup_before_epoch(runner: Runner) -> None:
    """Called at the start of every epoch; ``runner.epoch`` is the epoch about to run (0-based)."""


@hookspec
def selfsup_after_epoch(runner: Runner) -> None:
    """Called at the end of every epoch, before the epoch's checkpoint is written;
    ``runner.epoch`` is still the 0-based index of the epoch that just ended (as in MMCV),
    so ``(runner.epoch + 1) % n == 0`` selects every n-th epoch."""


@hookspec
def selfsup_before_iter(runner: Runner) -> None:
    """Called before every training iteration; ``runner.iter`` is its global index (0-based)."""


@hookspec
def selfsup_before_backward(runner: Runner, loss: torch.Tensor) -> None:
    """Called every iteration after the forward pass, before ``loss.backward()``.

    ``loss`` is the scalar about to be differentiated (already divided by the accumulation
    group's size). Reading it as a Python number synchronises the device.
    """


@hookspec
def selfsup_after_backward(runner: Runner) -> None:
    """Called every iteration right after the backward pass: the parameters' ``.grad`` hold
    this iteration's gradients (summed over the accumulation group so far, reduced across
    processes on update steps). On update steps they are already unscaled from fp16 loss
    scaling, and the config's ``grad_clip`` is applied after this hook, so a hook may zero,
    cancel (set to ``None``) or rescale gradients here, e.g. to freeze layers for some
    iterations."""


@hookspec
def selfsup_before_optimizer_step(runner: Runner, optimizer: torch.optim.Optimizer) -> None:
    """Called on iterations that step the optimizer (``runner.is_update_step``), after
    gradient clipping and just before ``optimizer.step()``."""


@hookspec
def selfsup_after_iter(runner: Runner, outputs: dict[str, Any]) -> None:
    """Called after every iteration's backward pass (and optimizer step, when
    ``runner.is_update_step``; with gradient accumulation not every iteration steps) with
    the algorithm's outputs (the dict of named losses, as tensors: reading them as Python
    numbers synchronises the device). ``runner.iter`` is still this iteration's index."""


@hookspec
def selfsup_on_exception(runner: Runner, exception: BaseException) -> None:
    """Called when an exception escapes the training loop, before it propagates; the last
    good checkpoint is still intact. Used to flush logs and close resources."""
