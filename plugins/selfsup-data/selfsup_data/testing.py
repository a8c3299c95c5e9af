"""Small real image sets for plugin tests: no download, no network.

:func:`fashion_mnist_npz` writes the first ``num_samples`` Fashion-MNIST images of a split
(from ``/usr/share/datasets/fashion-mnist`` or ``data/fashion-mnist``, where the Debian
package ``dataset-fashion-mnist`` or the user put them) to a ``.npz`` that the
``NumpyArrays`` source reads. Where the files are missing it writes class-dependent synthetic
28x28 images instead, so a test still runs end to end (``real`` in the result says which).

:func:`config_on_npz` points a shipped config at such a file, and :func:`run_config_on_npz`
trains it for one small epoch through a real ``selfsup-run`` subprocess, the end-to-end check
every method plugin makes.
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .sources.mnist import FASHION_MNIST_CLASSES, FashionMNIST


#: A SimCLR run small enough for a unit test: ResNet-18 at width 4 on 8x8 grey images from a
#: ``NumpyArrays`` file, batch 8, no workers, one log record per iteration, no curves.
TINY_SIMCLR_CONFIG = """
seed = 0
[model]
type = "SimCLR"
backbone = {{ type = "ResNet", depth = 18, in_channels = 1, stem_type = "cifar", base_channels = 4, stem_channels = 4 }}
neck = {{ type = "NonLinearNeck", in_channels = 32, hid_channels = 16, out_channels = 8, with_avg_pool = true }}
head = {{ type = "ContrastiveHead" }}
[data]
samples_per_gpu = 8
workers_per_gpu = 0
[data.train]
type = "MultiViewDataset"
num_views = [2]
pipelines = [[{flip}{{ type = "ToImage" }}, {{ type = "ToDtype", dtype = "float32", scale = true }}]]
data_source = {{ type = "NumpyArrays", file = "{file}" }}
[optimizer]
type = "SGD"
lr = 0.01
[runner]
max_epochs = {max_epochs}
precision = "fp32"
[log_config]
interval = 1
plot = false
"""


def write_tiny_simclr_config(path: str | os.PathLike[str], npz: str | os.PathLike[str], *, max_epochs: int = 1,
                             flip: bool = True, extra: str = "") -> Path:
    """Write :data:`TINY_SIMCLR_CONFIG` on the images of ``npz`` to ``path`` (plus ``extra``
    TOML, e.g. ``[[hooks]]`` tables) and return it; ``flip`` adds a random horizontal flip."""
    text = TINY_SIMCLR_CONFIG.format(flip='{ type = "RandomHorizontalFlip" }, ' if flip else "",
                                     file=Path(npz).as_posix(), max_epochs=max_epochs)
    path = Path(path)
    path.write_text(text + extra, encoding="utf-8")
    return path


def _synthetic(num_samples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Grey 28x28 images of 10 classes: a bright bar whose orientation and position depend on
    the class, with noise, so that augmentations and a contrastive loss have something to learn."""
    rng = np.random.default_rng(seed)
    labels = np.arange(num_samples) % 10
    images = rng.integers(0, 40, size=(num_samples, 28, 28)).astype(np.int64)
    for i, label in enumerate(labels):
        offset = 4 + 2 * (label % 5) + int(rng.integers(-1, 2))
        if label < 5:
            images[i, offset : offset + 6, 3:25] += 180
        else:
            images[i, 3:25, offset : offset + 6] += 180
    return np.clip(images, 0, 255).astype(np.uint8), labels.astype(np.int64)


def fashion_mnist_npz(path: str | os.PathLike[str], num_samples: int = 256, split: str = "train",
                      seed: int = 0) -> tuple[Path, bool]:
    """Write ``num_samples`` Fashion-MNIST images and labels of ``split`` to ``path`` (.npz with
    ``images``, ``labels``, ``classes``) and return ``(path, real)``; ``real`` is False when the
    dataset is not installed and synthetic images were written instead."""
    path = Path(path)
    try:
        root = "data/fashion-mnist" if os.path.isdir("data/fashion-mnist") else None
        source = FashionMNIST(root=root, split=split)
        images, labels, real = source.images[:num_samples], source.labels[:num_samples], True
    except FileNotFoundError:
        images, labels = _synthetic(num_samples, seed)
        real = False
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, images=images, labels=labels, classes=np.array(FASHION_MNIST_CLASSES))
    return path, real


#: Overrides that make one epoch of a shipped Fashion-MNIST config take seconds on a CPU:
#: one epoch, batch 32, a width-8 backbone, no loader workers, no online evaluation.
SMALL_RUN_VALUES: dict[str, Any] = {
    "runner.max_epochs": 1, "data.samples_per_gpu": 32, "data.workers_per_gpu": 0, "log_config.interval": 1,
    "evaluation.interval": 0, "evaluation.samples_per_gpu": 128, "evaluation.workers_per_gpu": 0,
    "model.backbone.base_channels": 8, "model.backbone.stem_channels": 8,
}

_DATA_SOURCES = ("data.train.data_source", "evaluation.train.data_source", "evaluation.test.data_source")


def config_on_npz(config: str | os.PathLike[str], npz: str | os.PathLike[str], out: str | os.PathLike[str],
                  values: Mapping[str, Any] | None = None) -> tuple[Path, list[str]]:
    """A copy of ``config`` whose training and evaluation data sources read ``npz`` (a
    ``NumpyArrays`` file, e.g. from :func:`fashion_mnist_npz`), written to ``out`` with
    ``values`` (dotted key -> value) applied.

    Returns ``(out, options)``: keys under ``hooks.`` address items of the ``[[hooks]]`` array,
    which a derived file cannot patch, so they come back as ``--cfg-options KEY=VALUE`` strings
    for the command line.
    """
    from selfsup_core.testing import derive_config

    source = {"type": "NumpyArrays", "file": str(npz)}
    values = dict(values or {})
    options = [f"{k}={json.dumps(v)}" for k, v in values.items() if k.startswith("hooks.")]
    derived = derive_config(config, out, replace=dict.fromkeys(_DATA_SOURCES, source),
                            values={k: v for k, v in values.items() if not k.startswith("hooks.")})
    return Path(derived), options


def run_config_on_npz(config: str | os.PathLike[str], npz: str | os.PathLike[str],
                      work_dir: str | os.PathLike[str], values: Mapping[str, Any] | None = None,
                      *extra_args: str) -> list[float]:
    """Train ``config`` on ``npz`` through a real ``selfsup-run`` subprocess on the CPU (one
    intra-op thread: tiny models only lose to threads that wait for each other), with
    :data:`SMALL_RUN_VALUES` and then ``values`` applied and ``extra_args`` passed on.

    Raises AssertionError with the run's stderr when it fails or leaves no ``latest.pth``;
    returns the per-iteration training losses from its ``metrics.jsonl``.
    """
    from selfsup_core.testing import read_metrics, run_selfsup

    work_dir = Path(work_dir)
    derived, options = config_on_npz(config, npz, work_dir.parent / f"{work_dir.name}.toml",
                                     {**SMALL_RUN_VALUES, **(values or {})})
    if options:
        extra_args = (*extra_args, "--cfg-options", *options)
    proc = run_selfsup(derived, "--work-dir", work_dir, "--device", "cpu", *extra_args, env={"OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, f"selfsup-run {Path(config).name} failed:\n{proc.stderr[-3000:]}"
    assert (work_dir / "latest.pth").is_file(), f"selfsup-run {Path(config).name} left no {work_dir}/latest.pth"
    return [float(r["loss"]) for r in read_metrics(work_dir, "train") if "loss" in r]
