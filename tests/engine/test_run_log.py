"""``run.log``: what a run prints is also in its work dir (progress bar updates as lines)."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from selfsup_core.cli import main
from selfsup_core.engine.runlog import TeeStream
from selfsup_data.testing import write_tiny_simclr_config

pytest.importorskip("selfsup_models")



def test_run_log_holds_the_console_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    np.savez(tmp_path / "tiny.npz", images=np.zeros((16, 8, 8), dtype=np.uint8))
    config = write_tiny_simclr_config(tmp_path / "tiny.toml", tmp_path / "tiny.npz")
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
