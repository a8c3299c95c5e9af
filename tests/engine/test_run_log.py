"""``run.log``: what a run prints is also in its work dir (progress bar updates as lines)."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from selfsup_core.cli import main
from selfsup_core.engine.runlog import TeeStream

pytest.importorskip("selfsup_models")

CONFIG = """
seed = 0
[model]
type = "SimCLR"
backbone = { type = "ResNet", depth = 18, in_channels = 1, stem_type = "cifar", base_channels = 4, stem_channels = 4 }
neck = { type = "NonLinearNeck", in_channels = 32, hid_channels = 16, out_channels = 8, with_avg_pool = true }
head = { type = "ContrastiveHead" }
[data]
samples_per_gpu = 8
workers_per_gpu = 0
[data.train]
type = "MultiViewDataset"
num_views = [2]
pipelines = [[{ type = "RandomHorizontalFlip" }, { type = "ToImage" }, { type = "ToDtype", dtype = "float32", scale = true }]]
data_source = { type = "NumpyArrays", file = "FILE" }
[optimizer]
type = "SGD"
lr = 0.01
[runner]
max_epochs = 1
[log_config]
interval = 1
plot = false
"""


def test_run_log_holds_the_console_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    np.savez(tmp_path / "tiny.npz", images=np.zeros((16, 8, 8), dtype=np.uint8))
    config = tmp_path / "tiny.toml"
    config.write_text(CONFIG.replace("FILE", (tmp_path / "tiny.npz").as_posix()), encoding="utf-8")
    assert main(["train", str(config), "--work-dir", str(tmp_path / "run"), "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    log = (tmp_path / "run" / "run.log").read_text(encoding="utf-8")
    assert log == captured.err + captured.out  # progress and messages (stderr), then the summary (stdout)
    assert log.startswith("selfsup ") and "epoch 1/1 [2/2]" in log and "done: epoch 1, iteration 2" in log


def test_bar_updates_become_lines(tmp_path: Path) -> None:
    console = io.StringIO()
    tee = TeeStream(console, tmp_path / "run.log")
    for text in ("start\n", "\r\033[Kepoch 1 [1/2]", "\r\033[Kepoch 1 [2/2]", "\n", "done\n"):
        tee.write(text)
    tee.close()
    assert console.getvalue() == "start\n\r\033[Kepoch 1 [1/2]\r\033[Kepoch 1 [2/2]\ndone\n"
    assert (tmp_path / "run.log").read_text() == "start\nepoch 1 [1/2]\nepoch 1 [2/2]\ndone\n"
