"""Shared fixtures of the selfsup-contrastive tests: a small real Fashion-MNIST subset and a
one-epoch ``selfsup-run`` of a shipped config on it (a real subprocess)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pytest
from selfsup_data.testing import fashion_mnist_npz, run_config_on_npz

CONFIGS = Path(__file__).resolve().parents[3] / "examples" / "configs"


@pytest.fixture(scope="session")
def fm_npz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """256 real Fashion-MNIST training images (synthetic ones when the dataset is absent)."""
    path, _ = fashion_mnist_npz(tmp_path_factory.mktemp("data") / "fm.npz", 256)
    return path


@pytest.fixture
def run_one_epoch(fm_npz: Path, tmp_path: Path) -> Callable[..., tuple[Path, list[float]]]:
    """``run_one_epoch(config_name, values, *args) -> (work_dir, losses)``: one small epoch of
    the shipped config ``examples/configs/<config_name>`` on the 256-image subset through
    ``selfsup-run`` (:func:`selfsup_data.testing.run_config_on_npz`), ``values`` applied last."""

    def run(config_name: str, values: dict[str, Any], *extra_args: str) -> tuple[Path, list[float]]:
        work_dir = tmp_path / "work"
        return work_dir, run_config_on_npz(CONFIGS / config_name, fm_npz, work_dir, values, *extra_args)

    return run
