"""Shared fixtures of the selfsup-siamese tests: installed registries, a small real
Fashion-MNIST file and shrunken copies of the shipped configs."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pytest
from selfsup_core import session
from selfsup_data.testing import config_on_npz

CONFIGS = Path(__file__).resolve().parents[3] / "examples" / "configs"


@pytest.fixture(autouse=True)
def one_thread():
    """The tests' models are tiny: one thread is faster than several competing for a busy CPU."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def installed(monkeypatch: pytest.MonkeyPatch):
    """Registries discovering the installed plugins afresh, in use for the test."""
    for name in ("SELFSUP_DISABLE_PLUGIN_AUTOLOAD", "SELFSUP_DISABLE_PLUGINS"):
        monkeypatch.delenv(name, raising=False)
    with session.use(session.Session()) as current:
        yield current.registries


@pytest.fixture(scope="session")
def fm_npz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """256 real Fashion-MNIST training images (synthetic ones if the dataset is absent)."""
    from selfsup_data.testing import fashion_mnist_npz

    path, _real = fashion_mnist_npz(tmp_path_factory.mktemp("data") / "fm.npz", 256)
    return path


# A ResNet-18 at width 8 (64 output channels) and small MLPs: one epoch of 256 images takes seconds.
TINY_BACKBONE = {"model.backbone.base_channels": 8, "model.backbone.stem_channels": 8,
                 "model.neck.in_channels": 64}
RUN_VALUES = {"runner.max_epochs": 1, "data.samples_per_gpu": 32, "data.workers_per_gpu": 0,
              "log_config.interval": 1, "evaluation.samples_per_gpu": 128, "evaluation.workers_per_gpu": 0}


@pytest.fixture
def tiny_config(fm_npz: Path, tmp_path: Path) -> Callable[..., Path]:
    """``tiny_config(shipped_name, **values)``: the shipped Fashion-MNIST config on ``fm_npz``
    (training and kNN bank/test), one epoch, batch 32, a width-8 backbone, plus ``values``
    (dotted key -> value; pass them as a dict because the keys contain dots)."""

    def make(name: str, values: dict[str, Any] | None = None) -> Path:
        values = {**RUN_VALUES, **TINY_BACKBONE, **(values or {})}
        config, options = config_on_npz(CONFIGS / name, fm_npz, tmp_path / f"tiny_{name}", values)
        assert not options, f"tiny_config cannot set [[hooks]] items ({options}); pass them as --cfg-options"
        return config

    return make
