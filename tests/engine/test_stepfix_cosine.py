"""``StepFixCosineAnnealing``: MMSelfSup 0.x's ``StepFixCosineAnnealingLrUpdaterHook`` (on mmcv
1.x's ``LrUpdaterHook``), checked at every iteration of small schedules against a hand
computation of 0.x's formula."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from selfsup_core.engine.schedules import build_lr_schedule
from selfsup_core.errors import ConfigError


def _cos(start: float, end: float, t: float) -> float:
    return end + 0.5 * (start - end) * (math.cos(math.pi * t) + 1)


def _mmselfsup_lr(i: int, *, base: float, ipe: int, epochs: int, warm: int, by_epoch: bool,
                  warmup: str | None = "linear", ratio: float = 1e-4, min_lr: float = 0.0) -> float:
    """0.x by hand: ``warm`` warmup iterations; the cosine runs over what is left after them
    (epochs with by_epoch, from epoch ``warm // ipe``), the linear warmup is ``regular * i / warm``."""
    if by_epoch:
        progress, max_progress = i // ipe, epochs
        if warmup is not None:
            progress, max_progress = progress - warm // ipe, max_progress - warm // ipe
    else:
        progress, max_progress = i, epochs * ipe
        if warmup is not None:
            progress, max_progress = progress - warm, max_progress - warm
    regular = _cos(base, min_lr, progress / max_progress)
    if warmup is None or i >= warm:
        return regular
    if warmup == "linear":
        return regular * (1 - (1 - i / warm))
    if warmup == "constant":
        return regular * ratio
    return regular * ratio ** (1 - i / warm)


@pytest.mark.parametrize("by_epoch", [False, True])
@pytest.mark.parametrize("warmup", ["linear", "constant", "exp"])
def test_every_iteration_matches_0x_with_warmup_by_epoch(by_epoch, warmup):
    ipe, epochs, base = 4, 6, 0.3
    s = build_lr_schedule({"policy": "StepFixCosineAnnealing", "min_lr": 0.0, "warmup": warmup,
                           "warmup_iters": 2, "warmup_ratio": 1e-4, "warmup_by_epoch": True,
                           "by_epoch": by_epoch}, None, iters_per_epoch=ipe, max_epochs=epochs)
    for i in range(ipe * epochs):
        want = _mmselfsup_lr(i, base=base, ipe=ipe, epochs=epochs, warm=8, by_epoch=by_epoch, warmup=warmup)
        assert s.lr_at(i, base) == pytest.approx(want, rel=1e-12, abs=1e-15), i


def test_hand_values_by_iteration_linear_warmup_ignores_ratio():
    # 2 epochs of 5 iterations, warmup of 4 iterations, base 1.0: the cosine runs over 6 iterations
    s = build_lr_schedule({"policy": "StepFixCosineAnnealing", "min_lr": 0.0, "warmup": "linear",
                           "warmup_iters": 4, "warmup_ratio": 0.5, "by_epoch": False},
                          None, iters_per_epoch=5, max_epochs=2)
    got = [s.lr_at(i, 1.0) for i in range(10)]
    cos = [0.5 * (1 + math.cos(math.pi * k / 6)) for k in range(-4, 6)]
    want = [0.0 * cos[0], 0.25 * cos[1], 0.5 * cos[2], 0.75 * cos[3], *cos[4:]]
    assert got == pytest.approx(want, rel=1e-12, abs=1e-15)
    assert got[4] == 1.0 and got[0] == 0.0  # the cosine starts at the end of the warmup
    assert got[7] == pytest.approx(0.5)


def test_min_lr_ratio_and_no_warmup_is_plain_cosine():
    s = build_lr_schedule({"policy": "StepFixCosineAnnealing", "min_lr_ratio": 0.1, "by_epoch": False},
                          None, iters_per_epoch=3, max_epochs=4)
    c = build_lr_schedule({"policy": "CosineAnnealing", "min_lr_ratio": 0.1, "by_epoch": False},
                          None, iters_per_epoch=3, max_epochs=4)
    assert [s.lr_at(i, 2.0) for i in range(12)] == [c.lr_at(i, 2.0) for i in range(12)]
    assert s.lr_at(6, 2.0) == pytest.approx(0.2 + 0.9)


def test_mae_in1k_figure_at_half_of_training():
    # 0.x MAE: 400 epochs, 40 warmup epochs, lr 1.5e-4 * 4096 / 256, by iteration
    s = build_lr_schedule({"policy": "StepFixCosineAnnealing", "min_lr": 0.0, "warmup": "linear",
                           "warmup_iters": 40, "warmup_ratio": 1e-4, "warmup_by_epoch": True,
                           "by_epoch": False}, None, iters_per_epoch=10, max_epochs=400)
    assert s.lr_at(2000, 2.4e-3) == pytest.approx(1.2e-3 * (1 + math.cos(math.pi * 160 / 360)))
    assert s.lr_at(2000, 2.4e-3) == pytest.approx(1.408e-3, abs=1e-6)


def test_step_sets_groups_and_warmup_longer_than_run_is_a_config_error():
    opt = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.5)
    s = build_lr_schedule({"policy": "stepfixcosineannealing", "warmup": "linear", "warmup_iters": 2,
                           "by_epoch": False}, opt, iters_per_epoch=2, max_epochs=3)
    s.step(1)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5 * 0.5 * _cos(1.0, 0.0, -1 / 4))
    with pytest.raises(ConfigError, match="warmup_iters"):
        build_lr_schedule({"policy": "StepFixCosineAnnealing", "warmup": "linear", "warmup_iters": 3,
                           "warmup_by_epoch": True}, None, iters_per_epoch=2, max_epochs=3)
