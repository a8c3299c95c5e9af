"""examples/plain_loop_simclr.py's loop against the trainer: same data, same fixed-seed
initialisation, deterministic views (identity and a horizontal flip), the trainer's sample order,
20 iterations of one batch; the loss curves agree to 1e-4."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from selfsup_core.config import load_config
from selfsup_core.engine.data import SeededSampler
from selfsup_core.engine.trainer import Trainer
from selfsup_core.testing import read_metrics
from selfsup_data.presets import MultiViewTransform

ROOT = Path(__file__).resolve().parents[3]
EXAMPLE = ROOT / "examples" / "plain_loop_simclr.py"
TAIL = [{"type": "ToImage"}, {"type": "ToDtype", "dtype": "float32", "scale": True},
        {"type": "Normalize", "mean": [0.5], "std": [0.25]}]
PIPELINES = [TAIL, [{"type": "RandomHorizontalFlip", "p": 1.0}, *TAIL]]
ITERS, SAMPLES, WIDTH, LR = 20, 16, 4, 0.005

CONFIG = f"""
seed = 0
[model]
type = "SimCLR"
[model.backbone]
type = "ResNet"
depth = 18
in_channels = 1
stem_type = "cifar"
out_indices = [4]
base_channels = {WIDTH}
stem_channels = {WIDTH}
[model.neck]
type = "NonLinearNeck"
in_channels = {8 * WIDTH}
hid_channels = 2048
out_channels = 128
num_layers = 2
with_avg_pool = true
[model.head]
type = "ContrastiveHead"
temperature = 0.1
[data]
samples_per_gpu = {SAMPLES}
workers_per_gpu = 0
[data.train]
type = "MultiViewDataset"
num_views = [1, 1]
pipelines = PIPELINES
data_source = {{ type = "NumpyArrays", file = "FILE" }}
[optimizer]
type = "SGD"
lr = {LR}
momentum = 0.9
weight_decay = 1e-4
[lr_config]
policy = "Fixed"
[runner]
max_epochs = {ITERS}
precision = "fp32"
channels_last = false
[log_config]
interval = 1
plot = false
[checkpoint_config]
interval = {ITERS}
"""


def _toml(value: object) -> str:
    """A TOML inline value (tables inline, lists bracketed)."""
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    return f'"{value}"' if isinstance(value, str) else repr(value)


def _load_example():
    spec = importlib.util.spec_from_file_location("plain_loop_simclr", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_plain_loop_matches_trainer(tmp_path: Path) -> None:
    images = np.random.default_rng(0).integers(0, 256, size=(SAMPLES, 12, 12), dtype=np.uint8)
    npz = tmp_path / "tiny.npz"
    np.savez(npz, images=images, labels=np.arange(SAMPLES) % 4)
    toml = tmp_path / "simclr_tiny.toml"
    toml.write_text(CONFIG.replace("PIPELINES", _toml(PIPELINES)).replace("FILE", npz.as_posix()), encoding="utf-8")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        Trainer(load_config(toml), work_dir=tmp_path / "run", device="cpu").run()
        trainer_losses = [r["loss"] for r in read_metrics(tmp_path / "run", "train") if "loss" in r]
        sampler = SeededSampler(SAMPLES, num_replicas=1, rank=0, shuffle=True, seed=0, drop_last=True)

        def order(epoch: int) -> list[int]:  # the trainer's sample order (its sampler, seeded by seed and epoch)
            sampler.set_epoch(epoch)
            return [index for index, _ in sampler]

        example = _load_example()
        _, loop_losses = example.train_simclr(torch.from_numpy(images).unsqueeze(1), MultiViewTransform(PIPELINES),
                                              epochs=ITERS, batch_size=SAMPLES, lr=LR, width=WIDTH, seed=0, order=order)
    finally:
        torch.set_num_threads(threads)
    assert len(trainer_losses) == len(loop_losses) == ITERS
    assert loop_losses[-1] < loop_losses[0]
    assert loop_losses == pytest.approx(trainer_losses, abs=1e-4)
