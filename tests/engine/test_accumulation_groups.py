"""Gradient-accumulation groups count global iterations, as MMSelfSup 0.x's
``DistOptimizerHook(update_interval=N)`` and ``BYOLHook(update_interval=N)`` do with mmcv's
``every_n_iters`` (a step after iteration ``i`` when ``(i + 1) % N == 0``): groups do not
restart at each epoch. The run's last partial group still steps (0.x drops it)."""
from __future__ import annotations

import pytest

from selfsup_core.config import load_config
from selfsup_core.engine.hooks import cosine_momentum
from selfsup_core.engine.trainer import Trainer


def _ema_trainer(write_config, tmp_path, *, length: int, epochs: int, accumulate: int) -> Trainer:
    config = write_config(f'[optimizer_config]\naccumulate_steps = {accumulate}\n'
                          '[[hooks]]\ntype = "MomentumUpdate"\nend_momentum = 1.0\n')
    text = config.read_text().replace('type = "selfsup_toy:ToyAlgorithm"\ndim = 8',
                                      'type = "selfsup_toy:ToyEMA"\nbase_momentum = 0.9')
    config.write_text(text.replace("length = 64", f"length = {length}"))
    return Trainer(load_config(config, [f"runner.max_epochs={epochs}"]), work_dir=tmp_path / "ema")


@pytest.mark.parametrize("length,epochs,accumulate", [(40, 3, 4), (24, 4, 2), (56, 2, 16)])
def test_steps_and_ema_updates_every_n_global_iterations(write_config, tmp_path, length, epochs, accumulate):
    trainer = _ema_trainer(write_config, tmp_path, length=length, epochs=epochs, accumulate=accumulate)
    trainer.run()
    ipe = length // 8
    max_iters = ipe * epochs
    # 0.x: a step (and an EMA update with that iteration's momentum) after every iteration i
    # with (i + 1) % N == 0 -- floor(max_iters / N) of them, whatever the epoch length
    mmselfsup = [i for i in range(max_iters) if (i + 1) % accumulate == 0]
    assert len(mmselfsup) == max_iters // accumulate
    # ours: the same, plus the last partial group of the run, which steps at the last iteration
    ours = mmselfsup + ([max_iters - 1] if max_iters % accumulate else [])
    history = trainer.model.history
    assert history == [cosine_momentum(i, max_iters, 0.9, 1.0) for i in ours]
    # groups restarting per epoch would have given epochs * ceil(ipe / N) steps
    assert len(history) != epochs * -(-ipe // accumulate) or ipe % accumulate == 0


def test_byol_in1k_count():
    # 0.x's BYOL in1k: 5005 iterations per epoch, 200 epochs, update_interval 16
    max_iters, n = 5005 * 200, 16
    assert max_iters // n == 62_562               # 0.x's optimizer steps and EMA updates
    assert 200 * -(-5005 // n) == 62_600          # what per-epoch groups gave
    assert -(-max_iters // n) == 62_563           # ours: the last 8 iterations still step
