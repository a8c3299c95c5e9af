"""Learning-rate schedules (MMCV formulas) and EMA momentum schedules."""
from __future__ import annotations

import io
import math

import pytest
import torch
from torch import nn

from selfsup_core.config import Config
from selfsup_core.engine.optim import build_optimizer
from selfsup_core.engine.schedules import (
    LrSchedule,
    MomentumSchedule,
    build_lr_schedule,
    cosine_momentum,
)
from selfsup_core.errors import ConfigError

IPE, EPOCHS = 10, 5  # iterations per epoch, epochs: 50 iterations


def _schedule(cfg, optimizer=None, ipe=IPE, epochs=EPOCHS) -> LrSchedule:
    return build_lr_schedule(cfg, optimizer, iters_per_epoch=ipe, max_epochs=epochs)


def _cos(base, target, t):
    return target + 0.5 * (base - target) * (1 + math.cos(math.pi * t))


def test_cosine_by_epoch_with_warmup_by_epochs():
    s = _schedule({"policy": "CosineAnnealing", "min_lr": 0.0, "by_epoch": True, "warmup": "linear",
                   "warmup_iters": 2, "warmup_by_epoch": True, "warmup_ratio": 0.1})
    base = 0.4
    # warmup of 20 iterations on top of the regular (epoch-wise) lr
    assert s.lr_at(0, base) == pytest.approx(0.4 * 0.1)
    assert s.lr_at(5, base) == pytest.approx(0.4 * (1 - (1 - 5 / 20) * 0.9))  # 0.13
    assert s.lr_at(5, base) == pytest.approx(0.13)
    assert s.lr_at(15, base) == pytest.approx(_cos(0.4, 0.0, 1 / 5) * (1 - (1 - 15 / 20) * 0.9))
    # after warmup: constant within an epoch, cosine over epochs
    assert s.lr_at(20, base) == s.lr_at(29, base) == pytest.approx(_cos(0.4, 0.0, 2 / 5))
    assert s.lr_at(49, base) == pytest.approx(_cos(0.4, 0.0, 4 / 5))


def test_cosine_by_iteration_with_min_lr_ratio_and_warmup_by_iters():
    s = _schedule({"policy": "CosineAnnealing", "min_lr_ratio": 0.1, "by_epoch": False,
                   "warmup": "constant", "warmup_iters": 5, "warmup_ratio": 0.5})
    base = 0.4
    assert s.lr_at(3, base) == pytest.approx(0.5 * _cos(0.4, 0.04, 3 / 50))
    assert s.lr_at(5, base) == pytest.approx(_cos(0.4, 0.04, 5 / 50))
    assert s.lr_at(25, base) == pytest.approx(0.04 + 0.18)
    assert s.lr_at(50, base) == pytest.approx(0.04)
    assert s.factor(25) == pytest.approx(0.55)


def test_exp_warmup_and_min_lr():
    s = _schedule({"policy": "CosineAnnealing", "min_lr": 0.01, "by_epoch": False,
                   "warmup": "exp", "warmup_iters": 4, "warmup_ratio": 0.01})
    assert s.lr_at(2, 1.0) == pytest.approx(_cos(1.0, 0.01, 2 / 50) * 0.01 ** 0.5)
    assert s.lr_at(25, 1.0) == pytest.approx(0.505)
    assert s.lr_at(25, 2.0) == pytest.approx(1.005)  # an absolute min_lr is every group's floor


def test_step_schedules():
    s = _schedule({"policy": "step", "step": [2, 4], "gamma": 0.1})
    assert [s.lr_at(i, 1.0) for i in (0, 19, 20, 39, 40, 49)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])
    s = _schedule({"policy": "step", "step": 2, "gamma": 0.5})
    assert [s.lr_at(i, 1.0) for i in (19, 20, 40)] == [1.0, 0.5, 0.25]
    s = _schedule({"policy": "step", "step": [15], "by_epoch": False, "min_lr": 0.05})
    assert [s.lr_at(i, 1.0) for i in (14, 15)] == [1.0, pytest.approx(0.1)]
    assert s.lr_at(15, 0.2) == 0.05  # clipped


def test_constant_poly_and_none():
    for s in (_schedule(None), _schedule({"policy": "Fixed"}), _schedule({"policy": "constant"})):
        assert [s.lr_at(i, 0.3) for i in (0, 17, 49)] == [0.3, 0.3, 0.3]
    s = _schedule({"policy": "constant", "warmup": "linear", "warmup_iters": 10, "warmup_ratio": 0.1})
    assert s.lr_at(4, 1.0) == pytest.approx(1 - 0.6 * 0.9) and s.lr_at(10, 1.0) == 1.0
    s = _schedule({"policy": "Poly", "power": 2.0, "min_lr": 0.01, "by_epoch": False})
    assert s.lr_at(25, 1.0) == pytest.approx(0.99 * 0.25 + 0.01)


def _mmcv_reference(schedule: LrSchedule, base_lr: float) -> list[float]:
    """The lr of each iteration as MMCV's LrUpdaterHook sets it, stateful: the regular lr
    is set in before_train_epoch (by_epoch) or before_train_iter, warmup in before_train_iter."""
    lrs, lr, regular = [], None, None
    for epoch in range(schedule.max_epochs):
        if schedule.by_epoch:
            regular = schedule.regular_lr(epoch * schedule.iters_per_epoch, base_lr)
            lr = regular
        for inner in range(schedule.iters_per_epoch):
            it = epoch * schedule.iters_per_epoch + inner
            if not schedule.by_epoch:
                regular = schedule.regular_lr(it, base_lr)
                lr = regular
            if schedule.warmup is not None and it < schedule.warmup_iters:
                lr = schedule.lr_at(it, base_lr)
            elif schedule.by_epoch and it == schedule.warmup_iters:
                lr = regular
            lrs.append(lr)
    return lrs


@pytest.mark.parametrize("by_epoch", [True, False])
@pytest.mark.parametrize("warmup_by_epoch", [True, False])
def test_pure_schedule_equals_mmcv_hook_sequence(by_epoch, warmup_by_epoch):
    s = _schedule({"policy": "CosineAnnealing", "min_lr": 1e-3, "by_epoch": by_epoch, "warmup": "linear",
                   "warmup_iters": 1 if warmup_by_epoch else 13, "warmup_by_epoch": warmup_by_epoch,
                   "warmup_ratio": 1e-3})
    assert [s.lr_at(i, 0.5) for i in range(50)] == _mmcv_reference(s, 0.5)


def test_step_sets_every_group_with_lr_mult():
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    optimizer = build_optimizer(model, {"type": "SGD", "lr": 0.1, "paramwise_options": {"^1\\.": {"lr_mult": 3.0}}})
    s = _schedule({"policy": "CosineAnnealing", "min_lr_ratio": 0.0, "by_epoch": False}, optimizer)
    s.step(25)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.05, 0.15])
    assert [g["initial_lr"] for g in optimizer.param_groups] == pytest.approx([0.1, 0.3])
    assert s.lrs_at(25) == [g["lr"] for g in optimizer.param_groups]
    assert s.last_iteration == 25
    # a group added by hand gets its lr as initial_lr
    plain = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.2)
    _schedule({"policy": "step", "step": [1]}, plain).step(10)
    assert plain.param_groups[0]["lr"] == pytest.approx(0.02)


def test_state_dict_round_trip_gives_identical_lrs():
    cfg = {"policy": "CosineAnnealing", "min_lr": 1e-4, "warmup": "linear", "warmup_iters": 7,
           "warmup_ratio": 1e-3, "by_epoch": False}
    optim_cfg = {"type": "LARS", "lr": 0.3, "exclude_bias_and_norm": True,
                 "paramwise_options": {"bias": {"lr_mult": 0.7}}}

    def run(schedule, optimizer, iterations):
        out = []
        for it in iterations:
            schedule.step(it)
            out.append([g["lr"] for g in optimizer.param_groups])
        return out

    opt = build_optimizer(nn.Linear(3, 3), optim_cfg)
    reference = run(_schedule(cfg, opt), opt, range(50))

    opt_a = build_optimizer(nn.Linear(3, 3), optim_cfg)
    sched_a = _schedule(cfg, opt_a)
    run(sched_a, opt_a, range(12))
    buffer = io.BytesIO()
    torch.save({"optimizer": opt_a.state_dict(), "lr_schedule": sched_a.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    opt_b = build_optimizer(nn.Linear(3, 3), optim_cfg)
    sched_b = _schedule(cfg, opt_b)
    opt_b.load_state_dict(saved["optimizer"])
    sched_b.load_state_dict(saved["lr_schedule"])
    assert sched_b.last_iteration == 11
    assert run(sched_b, opt_b, range(12, 50)) == reference[12:]  # bitwise


def test_load_state_dict_warns_about_changed_settings():
    s = _schedule({"policy": "step", "step": [2]})
    state = s.state_dict()
    other = _schedule({"policy": "step", "step": [3]})
    with pytest.warns(UserWarning, match="options"):
        other.load_state_dict(state)


# -- errors ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "table, expected",
    [
        ({"policy": "Cosine_Annealing"}, "sched.toml: lr_config.policy: unknown lr policy 'Cosine_Annealing'; did you mean"),
        ({"policy": "CosineAnnealing", "min_lr_rate": 0.1},
         "sched.toml: lr_config.min_lr_rate: unknown key of lr policy CosineAnnealing; did you mean 'min_lr_ratio'?"),
        ({"policy": "CosineAnnealing", "min_lr": 0.0, "min_lr_ratio": 0.1}, "lr_config.min_lr_ratio: give min_lr or min_lr_ratio"),
        ({"policy": "step", "gamma": 0.1}, "sched.toml: lr_config: lr policy step needs step"),
        ({"policy": "step", "step": [60, 30]}, "lr_config.step: must be in increasing order"),
        ({"policy": "Fixed", "warmup": "linear"}, "lr_config.warmup_iters: warmup = 'linear' needs warmup_iters"),
        ({"policy": "Fixed", "warmup": "linaer", "warmup_iters": 3}, "lr_config.warmup: unknown warmup 'linaer'; did you mean 'linear'?"),
        ({"policy": "Fixed", "warmup": "linear", "warmup_iters": 3, "warmup_ratio": 2.0}, "lr_config.warmup_ratio: must be in (0, 1]"),
        ({"policy": "Fixed", "by_epoch": "yes"}, "lr_config.by_epoch: must be true or false"),
        ({"policy": "Fixed", "warmup": "linear", "warmup_iters": 2.5}, "lr_config.warmup_iters: must be an integer"),
    ],
)
def test_config_errors_name_file_and_key(table, expected):
    config = Config({"lr_config": table}, filename="sched.toml")
    with pytest.raises(ConfigError) as info:
        build_lr_schedule(config["lr_config"], None, iters_per_epoch=IPE, max_epochs=EPOCHS, config=config)
    assert expected in str(info.value)


# -- momentum -------------------------------------------------------------------------------
def test_cosine_momentum():
    assert cosine_momentum(0, 100, 0.99) == pytest.approx(0.99)
    assert cosine_momentum(50, 100, 0.99) == pytest.approx(0.995)
    assert cosine_momentum(100, 100, 0.99) == pytest.approx(1.0)
    assert cosine_momentum(25, 100, 0.9, 0.95) == pytest.approx(0.95 - 0.05 * (math.cos(math.pi / 4) + 1) / 2)
    schedule = MomentumSchedule(0.996, max_iters=10)
    assert schedule(0) == pytest.approx(0.996) and schedule(10) == pytest.approx(1.0)
    assert MomentumSchedule(0.99, max_iters=10, cosine=False)(7) == 0.99
