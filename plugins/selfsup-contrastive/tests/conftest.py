"""Shared fixtures of the selfsup-contrastive tests: a small real Fashion-MNIST subset and a
one-epoch ``selfsup-run`` of a shipped config on it (a real subprocess)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pytest
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
        "model.backbone.stem_channels": 8, "model.backbone.depth": 18,
    }
    values.update(extra)
    return values


@pytest.fixture
def run_one_epoch(fm_npz: Path, tmp_path: Path) -> Callable[..., tuple[Path, list[float]]]:
    """``run_one_epoch(config_name, values) -> (work_dir, losses)``: one epoch of the shipped
    config ``examples/configs/<config_name>`` on the 256-image subset through ``selfsup-run``,
    with :func:`small_run_values` and then ``values`` applied;
    asserts success and a checkpoint, and returns the per-iteration training losses."""

    def run(config_name: str, values: dict[str, Any], *extra_args: str) -> tuple[Path, list[float]]:
        source = {"type": "NumpyArrays", "file": str(fm_npz)}
        cfg = derive_config(CONFIGS / config_name, tmp_path / "cfg.toml",
                            replace={"data.train.data_source": source, "evaluation.train.data_source": source,
                                     "evaluation.test.data_source": source},
                            values={**small_run_values(), **values})
        work_dir = tmp_path / "work"
        # one thread: on a small shared CPU several threads per process only contend
        proc = run_selfsup(cfg, "--work-dir", work_dir, "--device", "cpu", *extra_args, env={"OMP_NUM_THREADS": "1"})
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert (work_dir / "latest.pth").is_file()
        losses = [float(r["loss"]) for r in read_metrics(work_dir, "train") if "loss" in r]
        return work_dir, losses

    return run

