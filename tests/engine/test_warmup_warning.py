"""A warm-up that does not end before the run does is said in one line (issue 34)."""
from __future__ import annotations

import io

from selfsup_core.config import load_config
from selfsup_core.engine.trainer import Trainer


def test_a_warmup_longer_than_the_run_is_one_warning_line(write_config, tmp_path):
    config = load_config(write_config(), ["lr_config.warmup_iters=100", "runner.max_epochs=1", "log_config.progress=none",
                                          "lr_config.warmup_ratio=0.1"])
    stream = io.StringIO()
    Trainer(config, work_dir=tmp_path / "w", stream=stream).run()
    lines = [line for line in stream.getvalue().splitlines() if line.startswith("warning: lr_config")]
    # 8 iterations, cosine per iteration x a 100-iteration linear warm-up from 0.1: the largest factor is at
    # iteration 1: 0.5 * (1 + cos(pi / 8)) * (0.1 + 0.9 / 100) = 0.9619 * 0.109 = 0.1048
    assert lines == ["warning: lr_config: the warm-up (100 iterations) is not shorter than the whole run (8 iterations): "
                     "the lr reaches only 10.5% of its configured value; shorten lr_config.warmup_iters (or "
                     "warmup_by_epoch) for this run length"]

    stream = io.StringIO()
    Trainer(load_config(write_config(), ["runner.max_epochs=1"]), work_dir=tmp_path / "v", stream=stream).run()
    assert "warning: lr_config" not in stream.getvalue()
