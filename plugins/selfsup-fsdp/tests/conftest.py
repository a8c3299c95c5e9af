"""Fixtures of the fsdp2 tests: the toy module (``fsdp_toy``) on the import path."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
_LAUNCH_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "LOCAL_WORLD_SIZE", "GROUP_RANK")


@pytest.fixture
def toy_types(monkeypatch):
    """Put this folder on sys.path and allow import-path types in-process (subprocesses
    pass ``--allow-import-paths`` themselves)."""
    from selfsup_core.import_paths import allowing

    monkeypatch.syspath_prepend(str(HERE))
    with allowing():
        yield


@pytest.fixture
def toy_env():
    """Environment for subprocesses that import the toy module, without any launcher's variables."""
    env = {k: v for k, v in os.environ.items()
           if k not in _LAUNCH_KEYS and not k.startswith(("SLURM_", "TORCHELASTIC")) and k != "SELFSUP_DEBUG"}
    env["PYTHONPATH"] = str(HERE) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return dict(env, OMP_NUM_THREADS="1", TORCH_CPP_LOG_LEVEL="ERROR")


def python() -> str:
    return sys.executable
