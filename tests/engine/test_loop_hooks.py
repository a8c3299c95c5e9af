"""The step hooks around backward and the optimizer step, and the two hook contracts:
``selfsup_process_config`` on every path to a run, ``selfsup_resolve_checkpoint`` for ``--resume``."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from selfsup_core import plugins as _plugins
from selfsup_core.session import Session
from selfsup_core.config import load_config
from selfsup_core.engine import checkpoint as ckpt
from selfsup_core.engine.trainer import Trainer
from selfsup_core.hookspecs import hookimpl


class StepRecorder:
    """Records the order of the step hooks and what they see; freezes ``model.linear`` for
    the first ``freeze`` iterations by cancelling its gradient after backward."""

    def __init__(self, freeze: int = 0) -> None:
        self.calls: list[tuple[str, int]] = []
        self.freeze = freeze
        self.grad_seen: list[bool] = []
        self.losses: list[float] = []

    @hookimpl
    def selfsup_before_iter(self, runner):
        self.calls.append(("before_iter", runner.iter))

    @hookimpl
    def selfsup_before_backward(self, runner, loss):
        assert loss.requires_grad and loss.dim() == 0
        self.losses.append(float(loss.detach()))
        self.calls.append(("before_backward", runner.iter))

    @hookimpl
    def selfsup_after_backward(self, runner):
        grads = [p.grad for p in runner.model.parameters() if p.grad is not None]
        self.grad_seen.append(bool(grads))
        if runner.iter < self.freeze:
            for p in runner.model.parameters():
                p.grad = None
        self.calls.append(("after_backward", runner.iter))

    @hookimpl
    def selfsup_before_optimizer_step(self, runner, optimizer):
        assert optimizer is runner.optimizer and runner.is_update_step
        self.calls.append(("before_optimizer_step", runner.iter))

    @hookimpl
    def selfsup_after_iter(self, runner, outputs):
        self.calls.append(("after_iter", runner.iter))


def _trainer(config_path: Path, work_dir: Path, manager, overrides=(), **kwargs) -> Trainer:
    return Trainer(load_config(config_path, list(overrides)), work_dir=work_dir, plugin_manager=manager, **kwargs)


def _manager(*plugins) -> _plugins.PluginManager:
    manager = _plugins.PluginManager(load_entry_points=False)
    for plugin in plugins:
        manager.register(plugin)
    return manager


def test_step_hooks_run_in_order_and_see_gradients(write_config, tmp_path):
    recorder = StepRecorder()
    config = write_config("[optimizer_config]\nupdate_interval = 2\n")
    _trainer(config, tmp_path / "run", _manager(recorder), ["runner.max_epochs=1"]).run()
    first = [name for name, it in recorder.calls if it == 0]
    assert first == ["before_iter", "before_backward", "after_backward", "after_iter"]
    second = [name for name, it in recorder.calls if it == 1]
    assert second == ["before_iter", "before_backward", "after_backward", "before_optimizer_step", "after_iter"]
    steps = [it for name, it in recorder.calls if name == "before_optimizer_step"]
    assert steps == [1, 3, 5, 7]  # 64 samples / 8 per batch = 8 iterations, groups of 2
    assert all(recorder.grad_seen) and len(recorder.grad_seen) == 8


class CaptureStart:
    """Keeps a copy of the model's state when the run starts."""

    def __init__(self) -> None:
        self.state: dict[str, torch.Tensor] = {}

    @hookimpl
    def selfsup_before_run(self, runner):
        self.state = {k: v.detach().clone() for k, v in runner.model.state_dict().items() if v.is_floating_point()}


def _changed(trainer: Trainer, start: dict[str, torch.Tensor]) -> list[str]:
    final = trainer.model.state_dict()
    return [k for k, v in start.items() if not torch.equal(v, final[k])]


def test_after_backward_can_cancel_gradients_and_freeze_the_model(write_config, tmp_path):
    config = write_config()
    frozen_start, moving_start = CaptureStart(), CaptureStart()
    frozen = _trainer(config, tmp_path / "frozen", _manager(StepRecorder(freeze=10**6), frozen_start), ["runner.max_epochs=1"])
    frozen.run()
    assert frozen_start.state and _changed(frozen, frozen_start.state) == []  # SGD skips parameters without .grad
    moving = _trainer(config, tmp_path / "moving", _manager(StepRecorder(freeze=0), moving_start), ["runner.max_epochs=1"])
    moving.run()
    assert _changed(moving, moving_start.state)


class SetsLr:
    @hookimpl
    def selfsup_process_config(self, config):
        config.set("optimizer.lr", 0.0125, origin="sets-lr plugin")


def test_process_config_runs_once_for_a_trainer_built_in_python(write_config, tmp_path):
    calls: list[str] = []

    class Counting(SetsLr):
        @hookimpl
        def selfsup_process_config(self, config):
            calls.append(config.filename)
            super().selfsup_process_config(config)

    manager = _manager(Counting())
    config = load_config(write_config(), ["runner.max_epochs=1"])
    trainer = Trainer(config, work_dir=tmp_path / "run", plugin_manager=manager)
    assert trainer.config.get("optimizer.lr") == 0.0125 and len(calls) == 1
    trainer.run()
    assert load_config(tmp_path / "run" / "config.toml").data["optimizer"]["lr"] == 0.0125
    Session(plugin_manager=manager).prepare(config)  # already processed: not again
    assert len(calls) == 1


class ResolvesScheme:
    def __init__(self, target: Path) -> None:
        self.target = target
        self.asked: list[str] = []

    @hookimpl
    def selfsup_resolve_checkpoint(self, uri):
        self.asked.append(uri)
        return str(self.target) if uri.startswith("store://") else None


def test_resume_takes_a_reference_a_plugin_resolves(write_config, tmp_path):
    config = write_config()
    first = tmp_path / "first"
    _trainer(config, first, _manager(), ["runner.max_epochs=1"]).run()
    resolver = ResolvesScheme(first / "latest.pth")
    result = _trainer(config, tmp_path / "second", _manager(resolver), ["runner.max_epochs=2"],
                      resume="store://runs/first").run()
    assert resolver.asked == ["store://runs/first"]
    assert result["epoch"] == 2 and result["iter"] == 16  # continued from epoch 1
    with pytest.raises(ckpt.CheckpointError, match=r"^--resume store://nowhere: .*no installed plugin resolves it"):
        _trainer(config, tmp_path / "third", _manager(), resume="store://nowhere").run()
    with pytest.raises(ckpt.CheckpointError, match=r"^--resume missing\.pth: no such checkpoint file"):
        _trainer(config, tmp_path / "fourth", _manager(), resume="missing.pth").run()
