"""Fixtures of the ``[evaluation]`` engine tests: a config writer and the toy modules
(``eval_online_toy``, ``eval_weights_toy``) on the import path."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # the suite runs with --import-mode=importlib


@pytest.fixture
def toy_types(monkeypatch):
    """Put this folder on sys.path and allow import-path types in-process (subprocesses
    pass ``--allow-import-paths`` themselves)."""
    from selfsup_core.import_paths import allowing

    monkeypatch.syspath_prepend(str(HERE))
    with allowing():
        yield


@pytest.fixture
def write_config(tmp_path, toy_types):
    """Write the toy training config plus extra TOML to a file (the toy types importable);
    returns its path."""
    from eval_online_toy import BASE_CONFIG

    def write(extra: str = "", name: str = "toy.toml") -> Path:
        path = tmp_path / name
        path.write_text(BASE_CONFIG + "\n" + extra, encoding="utf-8")
        return path

    return write


@pytest.fixture
def toy_env():
    """Environment for subprocesses that import the toy modules."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(HERE) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.pop("SELFSUP_DEBUG", None)
    return env
