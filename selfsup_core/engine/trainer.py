"""The training loop every algorithm shares.

An algorithm is an ``nn.Module`` whose ``forward(mode="train", **batch)`` returns a dict of
named losses; entries whose key contains ``"loss"`` are summed and optimised, every entry is
logged. The :class:`Trainer` owns everything else: devices and precision, torch.distributed,
the data loader, optimisation (accumulation, clipping, schedules), hooks, checkpoints and
logging. It is also the ``runner`` object the lifecycle hooks receive.
"""
from __future__ import annotations

import inspect
import os
import signal
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.distributed as torch_dist
from torch import nn

from .. import __version__
from .. import plugins as _plugins
from .. import registry as _registry
from .. import session as _session
from ..build import Builder, build_hooks, validate
from ..config import Config
from ..errors import ConfigError, SelfSupError, describe_exception
from . import checkpoint as ckpt
from . import dist, runtimes
from .data import (batch_size_of, device_transform_of, images_to_channels_last, shut_down_workers,
                   to_device)
from .logger import RunLogger
from .runtime import (
    device_type_of, resolve_device, resolve_precision, revert_sync_batchnorm, seed_everything, use_channels_last,
)
from .settings import RunSettings, read_settings
from .workdir import WorkDir

RUN_MARKERS = (ckpt.LATEST, "metrics.jsonl")


class NonFiniteLossError(SelfSupError):
    """The loss became NaN or infinite; the run stopped without writing a checkpoint."""


class RunInterrupted(SelfSupError):
    """SIGTERM or SIGINT stopped the run after a checkpoint was written."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + signum


class PluginHookError(SelfSupError):
    """A plugin's hook implementation raised during the run; its message names the plugin and
    the hook, and where a checkpoint of the last complete state was saved."""


#: Hooks called inside the training loop: a failure there leaves a state worth saving.
_LOOP_HOOKS = ("selfsup_before_epoch", "selfsup_before_iter", "selfsup_before_backward", "selfsup_after_backward",
               "selfsup_before_optimizer_step", "selfsup_after_iter", "selfsup_after_epoch")


class Trainer:
    """Runs one training job described by a config.

    Args:
        config: the resolved config (see :mod:`selfsup_core.engine.settings` for the
            trainer's tables; ``[model]`` and ``[data.train]`` are components).
        work_dir: where checkpoints, ``metrics.jsonl`` and ``config.toml`` go; default: the
            config's ``work_dir``, else ``work_dirs/<config file stem>``. Locked for the run's
            lifetime (:mod:`selfsup_core.engine.workdir`); a run that fails before its first
            iteration removes what it created there.
        resume: a checkpoint path, ``"auto"`` (the work dir's latest checkpoint; a fresh run
            when there is none) or None. A work dir that already holds a run is refused
            without it.
        device, deterministic, seed: override the config's values.
        session: the plugins, registries and config preparation to use (default: the
            process-wide :func:`selfsup_core.session.current`); ``registries`` and
            ``plugin_manager`` replace one part of it.
        stream: where progress lines go (default stderr).

    Hooks receive this object as ``runner``: ``model`` (the algorithm, unwrapped),
    ``ddp_model``, ``optimizer``, ``lr_schedule``, ``epoch``, ``iter`` (global iteration
    index), ``inner_iter``, ``max_epochs``, ``max_iters``, ``iters_per_epoch``, ``work_dir``,
    ``config``, ``settings``, ``dataset``, ``data_loader``, ``device``, ``rank``,
    ``world_size``, ``is_update_step`` (True when this iteration stepped the optimizer),
    ``logger``, :meth:`log_metrics` and :meth:`replace_sampler`.
    """

    def __init__(
        self,
        config: Config,
        *,
        work_dir: str | os.PathLike[str] | None = None,
        resume: str | None = None,
        device: str | None = None,
        deterministic: bool | None = None,
        seed: int | None = None,
        registries: _registry.Registries | None = None,
        plugin_manager: _plugins.PluginManager | None = None,
        session: _session.Session | None = None,
        stream: Any = None,
    ) -> None:
        if session is not None:
            self.session = session
        elif registries is None and plugin_manager is None:
            self.session = _session.current()
        else:
            self.session = _session.Session(plugin_manager=plugin_manager or _session.plugin_manager(),
                                            registries=registries or _session.registries())
        self.plugin_manager = self.session.plugin_manager
        self.registries = self.session.registries
        self.config = self.session.prepare(config)
        self.settings: RunSettings = read_settings(config, self.plugin_manager)
        if device is not None:
            self.settings.device = device
        if deterministic is not None:
            self.settings.deterministic = deterministic
        if seed is not None:
            self.settings.seed = seed
        self.work_dir = Path(work_dir or self.settings.work_dir or Path("work_dirs") / Path(config.filename).stem)
        self.resume = resume
        self.stream = stream
        self.epoch = 0
        self.iter = 0
        self.inner_iter = 0
        self.max_epochs = self.settings.max_epochs
        self.is_update_step = False
        self.hooks: list[tuple[str, Any]] = []
        self._stop_signal: int | None = None
        self._finished = False
        self.last_eval: dict[str, Any] | None = None

    # -- public -----------------------------------------------------------------------------
    @property
    def max_iters(self) -> int:
        return self.max_epochs * self.iters_per_epoch

    def log_metrics(self, record: dict[str, Any]) -> None:
        """Append a record to ``metrics.jsonl`` (main process only); ``mode`` defaults to
        ``"train"``; ``epoch`` (1-based, the epoch in progress) and ``iter`` (iterations
        done) are filled in unless given."""
        full = {"mode": "train", "epoch": self.epoch + 1, "iter": self.iter, **record}
        if full["mode"] == "eval" and "error" not in full:
            self.last_eval = full
        self.logger.log_metrics(full, step=self.iter)

    def replace_sampler(self, sampler: Any) -> None:
        """Draw the training batches' indices from ``sampler`` from the next epoch's iteration
        on (a hook's ``selfsup_before_epoch`` is in time for its own epoch), e.g. DeepCluster's
        uniform sampling over clusters.

        ``sampler`` must give this process the same number of indices per epoch as the one it
        replaces (``iters_per_epoch``, the lr schedule and resuming depend on it) and, like it,
        implement ``set_epoch(epoch, start)``; the trainer calls it at every epoch's start.
        """
        if len(sampler) != len(self.sampler):
            raise ValueError(f"replace_sampler: the new sampler gives {len(sampler)} indices per epoch, the "
                             f"current one {len(self.sampler)}; they must be equal")
        if not callable(getattr(sampler, "set_epoch", None)):
            raise TypeError(f"replace_sampler: {type(sampler).__name__} has no set_epoch(epoch, start)")
        self.data_loader.batch_sampler.sampler = sampler  # read when the next epoch's iterator is created
        self.sampler = sampler

    def run(self) -> dict[str, Any]:
        """Train to ``max_epochs``; returns ``{"work_dir", "epoch", "iter", "checkpoint",
        "seconds", "eval", "rank"}``: ``seconds`` of training in this process, ``eval`` the last
        online evaluation record of this process (None without one), ``rank`` this process's."""
        try:
            self._setup()
        except BaseException:
            self._teardown()
            self._clean_up_failed_start()
            raise
        try:
            with self._signal_handlers():
                self.plugin_manager.hook.selfsup_before_run(runner=self)
                self._train()
                self.plugin_manager.hook.selfsup_after_run(runner=self)
        except BaseException as exc:
            error = self._hook_failure(exc)
            shut_down_workers(getattr(self, "_batches", None), self.data_loader)
            try:
                self.plugin_manager.hook.selfsup_on_exception(runner=self, exception=exc)
            finally:
                self._teardown()
                self._clean_up_failed_start()
            if error is not None:
                raise error from exc
            raise
        self._teardown()
        if getattr(self, "_work", None) is not None:
            self._work.close()
        return {"work_dir": str(self.work_dir), "epoch": self.epoch, "iter": self.iter,
                "checkpoint": str(self.work_dir / ckpt.LATEST),
                "seconds": time.perf_counter() - self._start_time, "eval": self.last_eval, "rank": self.rank}

    # -- set-up -----------------------------------------------------------------------------
    def _setup(self) -> None:
        settings = self.settings
        wanted = settings.device
        from .launch import init_distributed  # srun/torchrun environment, global batch, dist_timeout

        self.dist = init_distributed(self.config, settings, device_type_of(wanted), self.registries)
        self.rank, self.world_size = self.dist.rank, self.dist.world_size
        self.device = resolve_device(wanted, self.dist.local_rank)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        self.autocast_dtype = resolve_precision(settings.precision, self.device)
        seed_everything(settings.seed, settings.deterministic, settings.cudnn_benchmark)
        resume_path = self._prepare_work_dir()

        validate(self.config, self.registries)
        builder = Builder(self.config, self.registries)
        model = builder.build(self.config.data["model"], "algorithms", ("model",))
        if not isinstance(model, nn.Module):
            raise ConfigError(self.config.problem(("model", "type"), f"must name an nn.Module algorithm, got {type(model).__name__}"))
        self.dataset = builder.build(self.config.data["data"]["train"], "datasets", ("data", "train"))
        self.hooks.extend(build_hooks(self.config, self.registries))
        # hooks plugins add from their sections (selfsup-eval's online evaluation), after the
        # configured hooks: they see the epoch's final state
        for contributed in self.plugin_manager.hook.selfsup_run_hooks(config=self.config, builder=builder):
            self.hooks.extend(contributed or ())

        if not dist.is_distributed() or self.device.type != "cuda":
            model = revert_sync_batchnorm(model)
        model.to(self.device)
        self.channels_last = use_channels_last(settings.channels_last, self.device, model)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        self.model = model
        self._forward_keys = _accepted_keywords(model.forward)

        from .optim import build_optimizer
        from .schedules import build_lr_schedule

        self.optimizer = build_optimizer(model, self.config.data.get("optimizer", {"type": "SGD", "lr": 0.1}),
                                         config=self.config, path=("optimizer",), registries=self.registries)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.autocast_dtype == torch.float16)

        from .data_path import build_data_path  # resident on the device, or a DataLoader

        self.data_loader, self.sampler, self.data_path = build_data_path(self)
        self.iters_per_epoch = len(self.data_loader)
        if self.iters_per_epoch == 0:
            raise ConfigError(self.config.problem(
                ("data", "samples_per_gpu"),
                f"the training set has {len(self.dataset)} samples, fewer than one batch of {settings.samples_per_gpu} "
                f"per process x {self.world_size} processes with drop_last; lower samples_per_gpu"))
        self.lr_schedule = build_lr_schedule(self.config.data.get("lr_config"), self.optimizer,
                                             iters_per_epoch=self.iters_per_epoch, max_epochs=self.max_epochs,
                                             config=self.config, path=("lr_config",), registries=self.registries)
        from .schedules import warmup_warning

        self._warmup_warning = warmup_warning(self.lr_schedule, self.max_epochs * self.iters_per_epoch)
        self.device_transform = (None if self.data_path.startswith("resident")  # batches come augmented
                                 else device_transform_of(self.dataset, self.device))

        compile_mode = settings.compile
        if compile_mode == "auto":  # torch.compile pays off on CUDA; on a CPU its warm-up rarely does
            compile_mode = self.device.type == "cuda"
        if compile_mode:
            target = getattr(model, "backbone", None) if compile_mode in (True, "backbone") else None
            (target if isinstance(target, nn.Module) else model).compile()
        # the runtime named by [runner] distributed (a registered component; engine/runtimes.py)
        self.dist_runtime = runtimes.active_runtime(self.registries, settings.distributed if dist.is_distributed() else None)
        self.ddp_model: nn.Module = self.dist_runtime.wrap(model, self.optimizer, config=self.config, settings=settings,
                                                           device=self.device)

        self.plugin_manager.register_in_order(self.hooks)
        self._registered = [name for name, _ in self.hooks]
        self.logger = RunLogger(self.work_dir, enabled=self.dist.is_main, progress=settings.progress,
                                tensorboard=settings.tensorboard, stream=self.stream)
        if resume_path is not None:
            self._load_checkpoint(resume_path)
        if self.dist.is_main:
            from ..resume_config import saved_config_text

            (self.work_dir / "config.toml").write_text(saved_config_text(self.config), encoding="utf-8")
            self.logger.message(
                f"selfsup {__version__}: {type(model).__name__} on {self.device}"
                f"{f' x {self.world_size} processes' if self.world_size > 1 else ''}, "
                f"precision {str(self.autocast_dtype).replace('torch.', '') if self.autocast_dtype else 'fp32'}, "
                f"{len(self.dataset)} samples, {self.iters_per_epoch} iterations/epoch, data: {self.data_path}; "
                f"work dir {self.work_dir}")
            if self._warmup_warning:
                self.logger.message(self._warmup_warning)

    def _prepare_work_dir(self) -> Path | None:
        """Create and lock the work dir (main process), refuse to clobber a run, check that
        the folder is writable, remove stale temporary files, and find the checkpoint to resume."""
        work_dir = self.work_dir
        resume = self.resume
        if resume is not None and resume != "auto":
            try:  # a file, or a reference a plugin's selfsup_resolve_checkpoint turns into one
                resume = self.resume = self.session.resolve_checkpoint(resume, "--resume")
            except SelfSupError as exc:
                raise ckpt.CheckpointError(str(exc)) from None
        if self.dist.is_main:
            self._work = WorkDir(work_dir)
            self._work.open()  # the lock first: a run still going is named, not mistaken for a finished one
        if resume is not None and resume != "auto":
            found: Path | None = Path(resume)
        elif resume == "auto":
            found = ckpt.find_latest(work_dir)
        else:
            found = None
            existing = [m for m in RUN_MARKERS if (work_dir / m).exists()] + [p.name for p in ckpt.list_epoch_checkpoints(work_dir)]
            if existing:
                raise SelfSupError(
                    f"work dir {work_dir} already holds a run ({existing[0]}); continue it with --resume "
                    "(or --resume auto), or pass --work-dir NEW_DIR for a new run; nothing was changed")
        if self.dist.is_main:
            self._work.check_writable()
            self._work.remove_stale_temporaries()
        dist.barrier()
        return found

    def _clean_up_failed_start(self) -> None:
        """Release the work dir; when this process has not finished one training iteration,
        first remove what the run created (see :meth:`WorkDir.clean_up`)."""
        work = getattr(self, "_work", None)
        if work is None:
            return
        started = getattr(self, "_start_iter", None)
        if started is None or self.iter == started:
            work.clean_up()
        work.close()

    # -- the loop ---------------------------------------------------------------------------
    def _train(self) -> None:
        settings = self.settings
        accumulate = settings.accumulate_steps
        hook = self.plugin_manager.hook
        device = self.device
        non_blocking = device.type == "cuda"
        check_every = 1 if device.type == "cpu" else settings.log_interval
        autocast = (torch.autocast(device.type, dtype=self.autocast_dtype) if self.autocast_dtype is not None
                    else nullcontext())
        grad_clip = settings.grad_clip
        params = [p for p in self.model.parameters() if p.requires_grad]
        self._start_time = time.perf_counter()
        self._start_iter = self.iter
        while self.epoch < self.max_epochs:
            start = self.inner_iter
            self.sampler.set_epoch(self.epoch, start * settings.samples_per_gpu)
            self.model.train()
            hook.selfsup_before_epoch(runner=self)
            window = _Window(device)
            epoch_window = _Window(device)
            tick = time.perf_counter()
            self._batches = iter(self.data_loader)
            for batch in self._batches:
                hook.selfsup_before_iter(runner=self)
                images = batch_size_of(batch) * self.world_size
                batch = to_device(batch, device, non_blocking)
                if self.device_transform is not None:
                    with torch.no_grad():
                        batch = self.device_transform(batch)
                if self.channels_last:
                    batch = images_to_channels_last(batch)
                # Accumulation groups count GLOBAL iterations (0.x's every_n_iters): a group may
                # span an epoch boundary; only the run's last group can be shorter (its loss is
                # divided by its own size and it steps, where 0.x drops it). The lr is set every
                # iteration, so a step uses the lr of its last iteration, as under mmcv. A run
                # resumed inside a group (an epoch ended mid-group) steps at the group's end with
                # the gradients of the iterations after the resume only.
                group_start = (self.iter // accumulate) * accumulate
                group_size = min(accumulate, self.max_iters - group_start)
                self.is_update_step = self.iter + 1 == group_start + group_size
                self.lr_schedule.step(self.iter)
                sync = self.is_update_step or not dist.is_distributed()
                with (nullcontext() if sync or not hasattr(self.ddp_model, "no_sync") else self.ddp_model.no_sync()):
                    with autocast:
                        outputs = self.ddp_model(mode="train", **self._forward_args(batch))
                    loss, parts = self._parse_outputs(outputs)
                    if group_size > 1:
                        loss = loss / group_size
                    hook.selfsup_before_backward(runner=self, loss=loss)
                    self.scaler.scale(loss).backward()
                if self.is_update_step and self.scaler.is_enabled():
                    self.scaler.unscale_(self.optimizer)  # hooks and clipping see true gradients
                hook.selfsup_after_backward(runner=self)
                if self.is_update_step:
                    if grad_clip is not None:
                        torch.nn.utils.clip_grad_norm_(params, grad_clip["max_norm"], grad_clip.get("norm_type", 2.0))
                    hook.selfsup_before_optimizer_step(runner=self, optimizer=self.optimizer)
                    self.scaler.step(self.optimizer)
                    self.scaler.update()
                    self.optimizer.zero_grad(set_to_none=True)
                window.add(parts, images)
                epoch_window.add(parts, images)
                hook.selfsup_after_iter(runner=self, outputs=outputs)
                self.inner_iter += 1
                self.iter += 1
                if self.inner_iter % check_every == 0 or self.inner_iter == self.iters_per_epoch:
                    window.check_finite(self)
                if self.inner_iter % settings.log_interval == 0:
                    self._log(window, time.perf_counter() - tick)
                    window = _Window(device)
                    tick = time.perf_counter()
                if self.is_update_step and self.inner_iter < self.iters_per_epoch and self._should_stop():
                    window.check_finite(self)
                    self._interrupt()
            if window.count:
                self._log(window, time.perf_counter() - tick)
            epoch_window.check_finite(self)
            self.log_metrics({"mode": "train_epoch", **epoch_window.means(), "lr": self._lr()})
            hook.selfsup_after_epoch(runner=self)
            self.epoch += 1
            self.inner_iter = 0
            interval = settings.checkpoint_interval
            path = self.save_checkpoint(epoch_file=self.epoch % interval == 0 or self.epoch == self.max_epochs)
            if self.epoch < self.max_epochs and self._should_stop():
                self._interrupt(saved=path)
        self._finished = True

    def _forward_args(self, batch: Any) -> dict[str, Any]:
        if not isinstance(batch, Mapping):
            return {"img": batch}
        if self._forward_keys is None:
            return dict(batch)
        return {k: v for k, v in batch.items() if k in self._forward_keys}

    def _parse_outputs(self, outputs: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if not isinstance(outputs, Mapping) or not outputs:
            raise SelfSupError(
                f"{type(self.model).__name__}.forward(mode='train') must return a non-empty dict of named "
                f"losses, got {type(outputs).__name__}")
        parts: dict[str, torch.Tensor] = {}
        total = None
        for key, value in outputs.items():
            if isinstance(value, (list, tuple)):
                value = sum(value)
            if not isinstance(value, torch.Tensor):
                continue
            value = value.float().mean() if value.dim() else value.float()
            parts[key] = value.detach()
            if "loss" in key:
                total = value if total is None else total + value
        if total is None:
            raise SelfSupError(
                f"{type(self.model).__name__}.forward(mode='train') returned {sorted(outputs)} but no tensor "
                "whose key contains 'loss'; the trainer optimises the sum of those")
        if len(parts) > 1:
            parts = {"loss": total.detach(), **parts}
        return total, parts

    def _lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def _log(self, window: _Window, seconds: float) -> None:
        means = window.means()
        images_per_s = window.images / seconds if seconds > 0 else 0.0
        elapsed = time.perf_counter() - self._start_time
        done = max(self.iter - self._start_iter, 1)
        eta = elapsed / done * (self.max_iters - self.iter)
        record = {**means, "lr": self._lr(), "images_per_s": round(images_per_s, 1)}
        self.log_metrics(record)
        self.logger.progress(epoch=self.epoch, max_epochs=self.max_epochs, inner_iter=self.inner_iter,
                             iters_per_epoch=self.iters_per_epoch, losses=means, lr=self._lr(),
                             images_per_s=images_per_s, eta_s=eta)

    # -- stopping -----------------------------------------------------------------------------
    @contextmanager
    def _signal_handlers(self) -> Iterator[None]:
        import threading

        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {}

        def request_stop(signum: int, frame: Any) -> None:
            if self._stop_signal is not None and signum == signal.SIGINT:
                raise KeyboardInterrupt  # a second Ctrl-C: stop now, no checkpoint
            self._stop_signal = signum
            self.logger.message(f"received {signal.Signals(signum).name}: saving a checkpoint at the next step")

        for signum in (signal.SIGTERM, signal.SIGINT):
            previous[signum] = signal.signal(signum, request_stop)
        try:
            yield
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def _should_stop(self) -> bool:
        if not dist.is_distributed():
            return self._stop_signal is not None
        if self.inner_iter % self.settings.log_interval:
            return False
        flag = torch.tensor([self._stop_signal or 0], device=self.device)
        dist.all_reduce(flag, op="max")
        if flag.item():
            self._stop_signal = self._stop_signal or int(flag.item())
            return True
        return False

    def _hook_failure(self, exc: BaseException) -> PluginHookError | None:
        """When ``exc`` came out of a plugin's hook implementation: save a checkpoint of the
        last complete state (inside the training loop, one process) and return the one-line
        error naming the plugin and the hook; None for any other exception.

        After ``selfsup_after_iter`` the iteration's optimisation step is done, so it counts
        as done; ``selfsup_after_epoch`` saves the epoch as trained, and a resumed run calls
        that hook again before the next epoch."""
        if isinstance(exc, (RunInterrupted, NonFiniteLossError)) or not isinstance(exc, Exception):
            return None
        found = _failing_hook(self.plugin_manager, exc)
        if found is None:
            return None
        plugin, hook_name = found
        done = self.iter + (hook_name == "selfsup_after_iter")
        where = (f"after epoch {self.epoch}, iteration {done}" if hook_name == "selfsup_after_run"
                 else f"at epoch {self.epoch + 1}, iteration {done}")
        reason = str(exc).splitlines()[0] if isinstance(exc, SelfSupError) else describe_exception(exc).splitlines()[0]
        latest = self.work_dir / ckpt.LATEST
        outcome = f"the last checkpoint {latest} is as it was" if latest.is_file() else "no checkpoint was written"
        started = getattr(self, "_start_iter", None)
        if hook_name in _LOOP_HOOKS and started is not None and done > started:  # else: nothing new to save
            if dist.is_distributed():
                outcome += " (the other processes cannot join a save now)"
            else:
                if hook_name == "selfsup_after_iter":
                    self.inner_iter += 1
                    self.iter += 1
                try:
                    saved = self.save_checkpoint(epoch_file=False)
                    outcome = (f"checkpoint saved to {saved}; continue with: selfsup-run {self.config.filename} "
                               f"--work-dir {self.work_dir} --resume")
                except SelfSupError as save_error:
                    outcome = str(save_error)
        return PluginHookError(f"plugin {plugin} failed in {hook_name} {where}: {reason}; {outcome}")

    def _interrupt(self, saved: Path | None = None) -> None:
        signum = self._stop_signal or signal.SIGTERM
        path = saved if saved is not None else self.save_checkpoint(epoch_file=False)
        name = signal.Signals(signum).name
        raise RunInterrupted(
            f"stopped by {name} at epoch {self.epoch + 1}, iteration {self.iter}; checkpoint saved to {path}; "
            f"continue with: selfsup-run {self.config.filename} --work-dir {self.work_dir} --resume", signum)

    # -- checkpoints --------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The full training state (see :mod:`selfsup_core.engine.checkpoint`)."""
        rng = ckpt.rng_state()
        if dist.is_distributed():
            gathered: list[Any] = [None] * self.world_size
            torch_dist.all_gather_object(gathered, rng)
            rngs = gathered
        else:
            rngs = [rng]
        hooks = {}
        for name, hook in self.hooks:
            if callable(getattr(hook, "state_dict", None)):
                hooks[name] = hook.state_dict()
        return {
            "meta": {
                "epoch": self.epoch,
                "iter": self.iter,
                "inner_iter": self.inner_iter,
                "world_size": self.world_size,
                "seed": self.settings.seed,
                "selfsup_version": __version__,
                "time": time.time(),
            },
            "state_dict": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "lr_schedule": self.lr_schedule.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rngs,
            "hooks": hooks,
        }

    def save_checkpoint(self, *, epoch_file: bool) -> Path:
        """Write ``latest.pth`` (and ``epoch_N.pth`` when ``epoch_file``), atomically.

        Collective: every process must call it. Only the main process writes."""
        state = self.dist_runtime.save_state(self, self.state_dict())  # e.g. fsdp2: shards elsewhere, the rest here
        latest = self.work_dir / ckpt.LATEST
        if self.dist.is_main:
            target = self.work_dir / f"epoch_{self.epoch}.pth" if epoch_file else latest
            kept = latest if latest.is_file() else None
            try:
                if epoch_file:  # two independent files, each written atomically (never a link)
                    ckpt.atomic_save(state, target)
                    kept = target
                    target = latest
                ckpt.atomic_save(state, latest)
            except (OSError, RuntimeError) as exc:  # torch.save reports a short write as RuntimeError
                raise ckpt.CheckpointError(
                    f"cannot write checkpoint {target} ({describe_exception(exc).splitlines()[0]}); "
                    + (f"the last complete checkpoint {kept} is kept" if kept else "no checkpoint was written")
                    + "; free space or fix the work dir's permissions, then continue with: "
                    f"selfsup-run {self.config.filename} --work-dir {self.work_dir} --resume {kept or ''}".rstrip()
                ) from exc
            if epoch_file:
                ckpt.prune(self.work_dir, self.settings.max_keep_ckpts)
            self.dist_runtime.after_save(self.work_dir)
        dist.barrier()
        return latest

    def _load_checkpoint(self, path: Path) -> None:
        state = ckpt.load(path, map_location=self.device)
        state = self.dist_runtime.load_state(self, state, path)
        missing = [k for k in ("meta", "state_dict", "optimizer") if k not in state]
        if missing:
            raise ckpt.CheckpointError(f"checkpoint {path} is not a training checkpoint (it lacks {', '.join(missing)})")
        try:
            self.model.load_state_dict(state["state_dict"])
            self.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as exc:
            raise ckpt.CheckpointError(
                f"checkpoint {path} does not fit this config's model/optimizer: {describe_exception(exc).splitlines()[0]}"
            ) from exc
        if "lr_schedule" in state:
            self.lr_schedule.load_state_dict(state["lr_schedule"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        for name, hook in self.hooks:
            if name in state.get("hooks", {}) and callable(getattr(hook, "load_state_dict", None)):
                hook.load_state_dict(state["hooks"][name])
        meta = state["meta"]
        self.epoch, self.iter, self.inner_iter = int(meta["epoch"]), int(meta["iter"]), int(meta["inner_iter"])
        rngs = state.get("rng") or []
        if meta.get("world_size") == self.world_size and self.rank < len(rngs):
            ckpt.set_rng_state(rngs[self.rank])
        elif rngs:
            self.logger.message(f"checkpoint {path} comes from {meta.get('world_size')} processes, this run has "
                                f"{self.world_size}: random number generators are re-seeded, not restored")
            if self.inner_iter:  # the position inside the epoch means nothing with another sharding
                self.logger.message(f"epoch {self.epoch + 1} was stopped part-way: it restarts from its beginning")
            # another sharding has another number of iterations per epoch
            self.iter, self.inner_iter = self.epoch * self.iters_per_epoch, 0
        self.logger.message(f"resumed from {path} at epoch {self.epoch + 1}, iteration {self.iter}")

    def _teardown(self) -> None:
        for name in getattr(self, "_registered", []):
            if self.plugin_manager.has_plugin(name):
                self.plugin_manager.unregister(name=name)
        self._registered = []
        logger = getattr(self, "logger", None)
        if logger is not None:
            logger.close()


class _Window:
    """Loss sums over a span of iterations, kept on the device (no host sync until read)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.sums: dict[str, torch.Tensor] = {}
        self.count = 0
        self.images = 0
        self._checked = 0

    def add(self, parts: dict[str, torch.Tensor], images: int) -> None:
        for key, value in parts.items():
            if key in self.sums:
                self.sums[key] += value
            else:
                self.sums[key] = value.clone()
        self.count += 1
        self.images += images

    def means(self) -> dict[str, float]:
        if not self.count:
            return {}
        keys = list(self.sums)
        values = torch.stack([self.sums[k] for k in keys]) / self.count
        values = dist.all_reduce(values, op="mean")
        return {k: float(v) for k, v in zip(keys, values.tolist())}

    def check_finite(self, trainer: Trainer) -> None:
        if not self.sums or self._checked == self.count:
            return
        unchecked = self.count - self._checked
        self._checked = self.count
        values = torch.stack(list(self.sums.values()))
        bad_flag = (~torch.isfinite(values)).any().float().reshape(1)
        if not bool(dist.all_reduce(bad_flag, op="max").item()):
            return
        bad = [k for k, v in self.sums.items() if not bool(torch.isfinite(v))]
        first = trainer.iter - unchecked + 1
        where = f"iteration {trainer.iter}" if unchecked == 1 else f"iterations {first}-{trainer.iter}"
        latest = trainer.work_dir / ckpt.LATEST
        kept = f"the last good checkpoint {latest} is intact" if latest.exists() else "no checkpoint was written"
        raise NonFiniteLossError(
            f"non-finite loss ({', '.join(bad)}) in epoch {trainer.epoch + 1}, {where}; stopped without saving: {kept}. "
            "Lower the learning rate, add [optimizer_config] grad_clip = {max_norm = 1.0}, or use precision = 'fp32'")


def _accepted_keywords(forward: Any) -> frozenset[str] | None:
    """Keyword names ``forward`` accepts, or None when it takes ``**kwargs``."""
    try:
        parameters = inspect.signature(forward).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return None
    return frozenset(p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))


def _failing_hook(plugin_manager: Any, exc: BaseException) -> tuple[str, str] | None:
    """``(plugin name, hook name)`` of the innermost hook implementation in ``exc``'s
    traceback, or None when the exception did not pass through one."""
    codes: dict[Any, tuple[str, str]] = {}
    for hook_name in dir(plugin_manager.hook):
        if not hook_name.startswith("selfsup_"):
            continue
        for impl in getattr(plugin_manager.hook, hook_name).get_hookimpls():
            code = getattr(getattr(impl.function, "__func__", impl.function), "__code__", None)
            if code is not None:
                codes[code] = (impl.plugin_name, hook_name)
    found = None
    tb = exc.__traceback__
    while tb is not None:
        hit = codes.get(tb.tb_frame.f_code)
        if hit is not None:  # the instance that ran, when one class serves several plugins
            owner = tb.tb_frame.f_locals.get("self")
            name = plugin_manager.get_name(owner) if owner is not None else None
            found = (name or hit[0], hit[1])
        tb = tb.tb_next
    return found


def train(config: Config, **kwargs: Any) -> dict[str, Any]:
    """Run a :class:`Trainer` on ``config``; keyword arguments go to its constructor."""
    return Trainer(config, **kwargs).run()


__all__ = ["NonFiniteLossError", "PluginHookError", "RunInterrupted", "Trainer", "train"]
