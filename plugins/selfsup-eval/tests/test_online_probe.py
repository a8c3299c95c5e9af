"""OnlineLinearProbe: per-epoch accuracy records in metrics.jsonl, and the pre-training itself
unchanged (same losses with and without the hook: stop-gradient, no draw from the run's RNG)."""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from selfsup_core.config import load_config
from selfsup_core.engine.trainer import Trainer
from selfsup_data.testing import write_tiny_simclr_config

pytest.importorskip("selfsup_contrastive")

HOOK = """
[[hooks]]
type = "OnlineLinearProbe"
num_classes = 3
lr = 0.02
"""


def _run(tmp_path: Path, name: str, extra: str) -> list[dict]:
    labels = np.arange(24) % 3
    images = (labels[:, None, None] * 100 + np.random.default_rng(0).integers(0, 30, (24, 8, 8))).astype(np.uint8)
    np.savez(tmp_path / "tiny.npz", images=images, labels=labels)
    config = write_tiny_simclr_config(tmp_path / f"{name}.toml", tmp_path / "tiny.npz", max_epochs=2, extra=extra)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        Trainer(load_config(config), work_dir=tmp_path / name, device="cpu", stream=io.StringIO()).run()
    finally:
        torch.set_num_threads(threads)
    return [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]


def test_online_probe_reports_every_epoch_and_leaves_training_alone(tmp_path: Path) -> None:
    plain = _run(tmp_path, "plain", "")
    probed = _run(tmp_path, "probed", HOOK)
    losses = [[r["loss"] for r in records if r["mode"] == "train"] for records in (plain, probed)]
    assert len(losses[0]) == 6 and losses[0] == losses[1]  # bit for bit: the probe does not touch the run
    reports = [r for r in probed if r["mode"] == "online_probe"]
    assert [(r["epoch"], r["iter"]) for r in reports] == [(1, 3), (2, 6)]
    for report in reports:
        assert 0.0 <= report["online_linear_top1"] <= 1.0 and report["online_linear_loss"] > 0
    # 24 images x 2 views per epoch were classified; accuracies are multiples of 1/48
    assert all(abs(r["online_linear_top1"] * 48 - round(r["online_linear_top1"] * 48)) < 1e-9 for r in reports)
    assert reports[1]["online_linear_loss"] < reports[0]["online_linear_loss"]


def test_online_probe_arguments_are_checked() -> None:
    from selfsup_eval.online_probe import OnlineLinearProbe

    with pytest.raises(ValueError, match="num_classes must be an integer >= 2"):
        OnlineLinearProbe(num_classes=1)
    with pytest.raises(ValueError, match="lr must be > 0"):
        OnlineLinearProbe(num_classes=3, lr=0)
