"""Shared fixtures of the selfsup-clustering tests: a small real Fashion-MNIST subset, a
one-epoch ``selfsup-run`` of a shipped config on it (a real subprocess), a fake runner."""
from __future__ import annotations

from pathlib import Path
from types import MethodType, SimpleNamespace
from typing import Any, Callable

import pytest
import torch
from selfsup_core.engine.trainer import Trainer
from selfsup_data.testing import SMALL_RUN_VALUES, fashion_mnist_npz, run_config_on_npz

CONFIGS = Path(__file__).resolve().parents[3] / "examples" / "configs"


@pytest.fixture(scope="session")
def fm_npz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """256 real Fashion-MNIST training images (synthetic ones when the dataset is absent)."""
    path, _ = fashion_mnist_npz(tmp_path_factory.mktemp("data") / "fm.npz", 256)
    return path


def small_run_values(**extra: Any) -> dict[str, Any]:
    """:data:`selfsup_data.testing.SMALL_RUN_VALUES` with ``extra`` on top."""
    return {**SMALL_RUN_VALUES, **extra}


@pytest.fixture
def run_config(fm_npz: Path, tmp_path: Path) -> Callable[..., tuple[Path, list[float]]]:
    """``run_config(config_name, values, *args, work_dir=None) -> (work_dir, losses)``: the
    shipped config ``examples/configs/<config_name>`` on the 256-image subset through
    ``selfsup-run`` (:func:`selfsup_data.testing.run_config_on_npz`), ``values`` applied last."""

    def run(config_name: str, values: dict[str, Any], *extra_args: str, work_dir: Path | None = None
            ) -> tuple[Path, list[float]]:
        work_dir = work_dir or tmp_path / "work"
        return work_dir, run_config_on_npz(CONFIGS / config_name, fm_npz, work_dir, values, *extra_args)

    return run


def fake_runner(model: torch.nn.Module, **kwargs: Any) -> SimpleNamespace:
    """The runner attributes the clustering hooks read, for one CPU process."""
    base = dict(model=model, epoch=0, iter=0, inner_iter=0, rank=0, world_size=1, device=torch.device("cpu"),
                settings=SimpleNamespace(samples_per_gpu=4, workers_per_gpu=0, seed=0), work_dir=Path("."),
                logger=SimpleNamespace(message=lambda text: None), autocast_dtype=None, channels_last=False)
    base.update(kwargs)
    runner = SimpleNamespace(**base)
    runner.replace_sampler = MethodType(Trainer.replace_sampler, runner)  # the trainer's own
    return runner


@pytest.fixture
def small_values() -> Callable[..., dict[str, Any]]:
    """:func:`small_run_values` as a fixture (test modules cannot import conftest under importlib)."""
    return small_run_values


@pytest.fixture
def make_runner() -> Callable[..., SimpleNamespace]:
    """:func:`fake_runner` as a fixture."""
    return fake_runner


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread for these tests' tiny models (restored afterwards): on a loaded
    CPU, OpenMP threads that wait for each other make them several times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
