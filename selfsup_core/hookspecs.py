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

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, Protocol

import attrs
import pluggy

if TYPE_CHECKING:
    import argparse
    from pathlib import Path

    import torch

    from .config import Config

@attrs.frozen
class ConfigSection:
    """A top-level config section a plugin owns (returned by ``selfsup_config_sections``).

    Attributes:
        name: the top-level key (``"evaluation"``).
        description: one line saying what the section holds.
        check: ``check(config)`` validates the section of a loaded config, raising one
            :class:`~selfsup_core.errors.ConfigError` that lists every problem. Called (only
            when the config has the section) by ``selfsup-run CONFIG`` and ``--check``
            before anything is built, next to the core's own checks. None: not checked.
        components: keys of the section that hold component tables, and their kind
            (``{"train": "datasets"}``): ``validate`` checks those tables against that
            registry before anything is built.
        provider: the plugin that declared it (filled in by :func:`declared`).
    """

    name: str
    description: str = ""
    check: Callable[[Config], None] | None = attrs.field(default=None, eq=False)
    components: Mapping[str, str] = attrs.field(factory=dict, converter=dict)
    provider: str = ""


class Builder(Protocol):
    """What ``selfsup_run_hooks`` receives to build component tables (the trainer's
    :class:`~selfsup_core.api.Builder`)."""

    def build(self, table: Any, kind: str | None, path: tuple[Any, ...] = (),
              default_args: Mapping[str, Any] | None = None) -> Any:
        """Validate then construct the component ``table`` found at config key ``path``."""


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


class ConvertedBackbone(NamedTuple):
    """What a ``selfsup_convert_backbone`` implementation returns.

    ``state``: the converted backbone state dict. ``details``: what the command reports about
    the result, JSON-able; for ``export`` the report's ``target`` table (``library``,
    ``arch``, ``exact``, ``shape_differences`` ...), for ``import`` at least ``dialect`` (a
    short name of the layout found, e.g. ``"resnet"``, ``"torchvision-vit"``) and ``arch``
    where known; a ``note`` (one line) is printed under the export report as it is.
    ``dropped``: the keys left out, as ``{"keys", "count", "reason"}`` rows.
    """

    state: dict[str, torch.Tensor]
    details: dict[str, Any]
    dropped: Sequence[dict[str, Any]] = ()


@hookspec(firstresult=True)
def selfsup_convert_backbone(
    state: Mapping[str, torch.Tensor],
    direction: Literal["export", "import"],
    layout: str,
    backbone: Mapping[str, Any] | None,
) -> ConvertedBackbone | None:
    """Convert a backbone state dict between selfsup's key names and another library's.

    Called by ``selfsup-run export --to LAYOUT`` (``direction="export"``: ``state`` has the
    backbone's own key names, ``layout`` is the target, ``"torchvision"`` or ``"timm"``) and
    by ``selfsup-run import-weights --from LAYOUT`` (``direction="import"``: ``state`` is the
    other library's weights, ``layout`` is the source, ``"torchvision"``, ``"timm"``,
    ``"mmcls"`` or ``"auto"``: any layout the implementation recognises). ``backbone`` is the
    ``[model.backbone]`` table that built the weights (``type`` and arguments) when the run's
    config is known, else ``None``: recognise the backbone by its key names then.

    Return a :class:`ConvertedBackbone`, or ``None`` when this implementation does not handle
    this backbone or layout (the next one is tried; the first non-``None`` answer wins).
    Raise :class:`~selfsup_core.errors.SelfSupError` (one line) when the backbone is yours
    but cannot be converted (e.g. a ResNet variant torchvision has no model for). When no
    implementation answers, the command stops with one line saying so. Each backbone family
    provides its own implementation (selfsup-models: ResNet, ViT, TimmBackbone); import
    torch inside the function, not at module level.
    """


@hookspec
def selfsup_after_training(config: Config, work_dir: Path, result: dict[str, Any]) -> list[tuple[str, str]] | None:
    """Called by ``selfsup-run`` (the command, not a ``Trainer`` built from Python) once after
    a training run finished without an exception, in the main process only, before the run's
    summary is printed. ``config`` is the run's config, ``work_dir`` its work dir and
    ``result`` what ``Trainer.run()`` returned (``epoch``, ``iter``, ``checkpoint``, ``eval``
    ...). Return rows ``(label, text)`` to add to the summary (e.g. ``("curves",
    "work_dirs/x/curves.png")``), or ``None``. Must not raise for a failure of its own
    (the run is trained and saved): report it in the row instead. selfsup-trackers draws the
    run's curves here (``[log_config] plot``).
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


@hookspec(firstresult=True)
def selfsup_resident_data(runner: Runner, memory: int | None) -> tuple[Any, Any, str] | str | None:
    """Feed the run from the training set held on the device, instead of a DataLoader.

    Called once in the trainer's set-up when ``[data] resident`` is true or ``"auto"`` (not
    for ``"auto"`` on a CPU with loader workers). ``runner`` exposes ``config``, ``settings``
    (``resident``, ``resident_memory_share``, ``samples_per_gpu`` ...), ``dataset``,
    ``device``, ``rank`` and ``world_size``; ``memory`` is the number of bytes to measure the
    set against (None: the device's own). Return ``(batches, sampler, description)``, where
    ``batches`` yields already augmented batches and ``description`` is the start-up line's
    ``data:`` text; or a one-line reason why this training set cannot be resident (the run
    then uses a DataLoader, or stops with it when ``resident = true``); or None when the
    implementation does not handle it. The first non-None answer wins.
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
