from __future__ import annotations

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent

BASE_CONFIG = """
seed = 3
deterministic = true

[model]
type = "selfsup_toy:ToyAlgorithm"
dim = 8

[data]
samples_per_gpu = 8
workers_per_gpu = 0

[data.train]
type = "selfsup_toy:ToyDataset"
length = 64

[optimizer]
type = "SGD"
lr = 0.05
momentum = 0.9
weight_decay = 1e-4

[lr_config]
policy = "CosineAnnealing"
min_lr = 0.0
warmup = "linear"
warmup_iters = 3
warmup_ratio = 0.1
by_epoch = false

[runner]
max_epochs = 3

[log_config]
interval = 2
progress = "lines"

[checkpoint_config]
interval = 1
"""


@pytest.fixture(autouse=True)
def _toy_on_path(monkeypatch):
    """Put selfsup_toy on sys.path and allow its import-path types (``--allow-import-paths``
    in-process); subprocesses pass the flag themselves."""
    from selfsup_core.import_paths import allowing

    monkeypatch.syspath_prepend(str(HERE))
    with allowing():
        yield


@pytest.fixture
def write_config(tmp_path):
    """Write BASE_CONFIG plus extra TOML lines to a file; returns its path."""

    def write(extra: str = "", name: str = "toy.toml") -> Path:
        path = tmp_path / name
        path.write_text(BASE_CONFIG + "\n" + extra, encoding="utf-8")
        return path

    return write


@pytest.fixture
def toy_env(monkeypatch):
    """Environment for subprocesses that must import selfsup_toy."""
    import os

    env = dict(os.environ)
    env["PYTHONPATH"] = str(HERE) + (":" + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.pop("SELFSUP_DEBUG", None)
    return env


def python() -> str:
    return sys.executable
