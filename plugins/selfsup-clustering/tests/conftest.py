"""Shared fixtures of the selfsup-clustering tests: a small real Fashion-MNIST subset, a
one-epoch ``selfsup-run`` of a shipped config on it (a real subprocess), a fake runner."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import pytest
import torch
from selfsup_core.testing import derive_config, read_metrics, run_selfsup
from selfsup_data.testing import fashion_mnist_npz

CONFIGS = Path(__file__).resolve().parents[3] / "examples" / "configs"


@pytest.fixture(scope="session")
def fm_npz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """256 real Fashion-MNIST training images (synthetic ones when the dataset is absent)."""
    path, _ = fashion_mnist_npz(tmp_path_factory.mktemp("data") / "fm.npz", 256)
    return path


def small_run_values(**extra: Any) -> dict[str, Any]:
    """Overrides that make one epoch of a Fashion-MNIST config take a few seconds on a CPU."""
    values = {
        "runner.max_epochs": 1, "data.samples_per_gpu": 32, "data.workers_per_gpu": 0,
        "log_config.interval": 1, "evaluation.interval": 0, "model.backbone.base_channels": 8,
        "model.backbone.stem_channels": 8,
    }
    values.update(extra)
    return values


@pytest.fixture
def run_config(fm_npz: Path, tmp_path: Path) -> Callable[..., tuple[Path, list[float]]]:
    """``run_config(config_name, values, *args) -> (work_dir, losses)``: the shipped config
    ``examples/configs/<config_name>`` on the 256-image subset through ``selfsup-run``;
    asserts success and a checkpoint, and returns the per-iteration training losses."""

    def run(config_name: str, values: dict[str, Any], *extra_args: str, work_dir: Path | None = None
            ) -> tuple[Path, list[float]]:
        source = {"type": "NumpyArrays", "file": str(fm_npz)}
        # list items ([[hooks]]) cannot be derived, only overridden on the command line
        options = [f"{k}={json.dumps(v)}" for k, v in values.items() if k.startswith("hooks.")]
        cfg = derive_config(CONFIGS / config_name, tmp_path / "cfg.toml",
                            replace={"data.train.data_source": source, "evaluation.train.data_source": source,
                                     "evaluation.test.data_source": source},
                            values={k: v for k, v in values.items() if not k.startswith("hooks.")})
        work_dir = work_dir or tmp_path / "work"
        if options:
            extra_args = (*extra_args, "--cfg-options", *options)
        # one intra-op thread: on a loaded CPU, OpenMP threads that wait for each other make a
        # tiny run several times slower
        proc = run_selfsup(cfg, "--work-dir", work_dir, "--device", "cpu", *extra_args, env={"OMP_NUM_THREADS": "1"})
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert (work_dir / "latest.pth").is_file()
        losses = [float(r["loss"]) for r in read_metrics(work_dir, "train") if "loss" in r]
        return work_dir, losses

    return run


def fake_runner(model: torch.nn.Module, **kwargs: Any) -> SimpleNamespace:
    """The runner attributes the clustering hooks read, for one CPU process."""
    base = dict(model=model, epoch=0, iter=0, inner_iter=0, rank=0, world_size=1, device=torch.device("cpu"),
                settings=SimpleNamespace(samples_per_gpu=4, workers_per_gpu=0, seed=0), work_dir=Path("."),
                logger=SimpleNamespace(message=lambda text: None), autocast_dtype=None, channels_last=False)
    base.update(kwargs)
    return SimpleNamespace(**base)


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
