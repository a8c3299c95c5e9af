"""The shipped Fashion-MNIST configs for one epoch through ``selfsup-run`` (a real subprocess)
on a small real subset: the run succeeds, writes a checkpoint, the loss goes down, and the
pretext accuracy is evaluated online and by ``selfsup-run eval``."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from selfsup_core.testing import derive_config, read_metrics, run_selfsup
from selfsup_data.testing import fashion_mnist_npz

CONFIGS = Path(__file__).resolve().parents[3] / "examples" / "configs"
ROTATION = CONFIGS / "rotation-pred_resnet18_1xb128-steplr-70e_fashion-mnist.toml"
RELATIVE_LOC = CONFIGS / "relative-loc_resnet18_1xb64-steplr-70e_fashion-mnist.toml"
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def pretext_evaluators(config: Path, test_source: dict) -> list[dict]:
    """The config's evaluators, with the pretext dataset reading ``test_source``."""
    from selfsup_core.config import load_config

    tables = load_config(config).data["evaluation"]["evaluators"]
    assert [t["type"] for t in tables] == ["KNN", "PretextAccuracy"]
    return [{**tables[0], "k": 20}, {**tables[1], "dataset": {**tables[1]["dataset"], "data_source": test_source}}]


def one_epoch(tmp_path: Path, config: Path, values: dict, images: int) -> tuple[Path, Path]:
    """Train ``config`` for one epoch on ``images`` real training images, 16 per step, on one
    CPU thread (no thread oversubscription on a shared CI machine); returns (config, work dir)."""
    train, _ = fashion_mnist_npz(tmp_path / "train.npz", images)
    test, _ = fashion_mnist_npz(tmp_path / "test.npz", 64, split="test")
    train_source = {"type": "NumpyArrays", "file": str(train)}
    test_source = {"type": "NumpyArrays", "file": str(test)}
    derived = derive_config(
        config, tmp_path / "derived.toml",
        replace={"data.train.data_source": train_source, "evaluation.train.data_source": train_source,
                 "evaluation.test.data_source": test_source},
        values={"runner.max_epochs": 1, "data.samples_per_gpu": 16, "data.workers_per_gpu": 0,
                "log_config.interval": 1, "model.backbone.base_channels": 8, "model.backbone.stem_channels": 8,
                "evaluation.interval": 1, "evaluation.online": "PretextAccuracy", "evaluation.workers_per_gpu": 0,
                "evaluation.samples_per_gpu": 64, "evaluation.evaluators": pretext_evaluators(config, test_source),
                **values})
    work = tmp_path / "work"
    proc = run_selfsup(derived, "--work-dir", work, "--device", "cpu", env=ONE_THREAD)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (work / "latest.pth").is_file()
    return derived, work


def assert_loss_went_down(work: Path, steps: int, margin: float) -> list[float]:
    """Mean loss of the last quarter of the ``steps`` iterations at least ``margin`` below the
    first quarter's."""
    losses = [float(r["loss"]) for r in read_metrics(work, "train") if "images_per_s" in r]
    assert len(losses) == steps
    q = steps // 4
    assert sum(losses[-q:]) / q < sum(losses[:q]) / q - margin, losses
    return losses


def test_rotation_pred_one_epoch_then_eval(tmp_path: Path) -> None:
    # batch 16 instead of 128: lr 0.05 without warm-up. With these settings the mean loss of the
    # last 8 steps is ~0.08 below the first 8's (ln 4 = 1.386) for seeds 0, 1 and 2 alike.
    derived, work = one_epoch(tmp_path, ROTATION, {"model.head.in_channels": 64, "lr_config.warmup": "none",
                                                  "optimizer.lr": 0.05}, images=512)
    assert_loss_went_down(work, steps=32, margin=0.03)
    (record,) = read_metrics(work, "eval")
    assert 0.0 <= record["pretext_top1"] <= 1.0
    out = tmp_path / "eval.json"
    proc = run_selfsup("eval", derived, "--checkpoint", work / "latest.pth", "--evaluator", "pretext", "knn",
                       "--out", out, "--device", "cpu", env=ONE_THREAD)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(out.read_text())["results"]
    assert results["pretext_top1"] == pytest.approx(record["pretext_top1"])  # same weights, same images
    assert 0.0 <= results["knn_top1"] <= 1.0


def test_relative_loc_one_epoch(tmp_path: Path) -> None:
    # batch 16 instead of 64, lr 0.05 without warm-up; neck/head sized for the width-8 backbone.
    # The loss falls fast (8 classes, ln 8 = 2.08): ~2.06 over the first 4 steps, ~1.85 over
    # the last 4 of 16.
    _, work = one_epoch(tmp_path, RELATIVE_LOC, {"model.neck.in_channels": 64, "model.neck.out_channels": 128,
                                                 "model.head.in_channels": 128, "lr_config.warmup": "none",
                                                 "optimizer.lr": 0.05}, images=256)
    assert_loss_went_down(work, steps=16, margin=0.05)
    (record,) = read_metrics(work, "eval")
    assert 0.0 <= record["pretext_top1"] <= 1.0
