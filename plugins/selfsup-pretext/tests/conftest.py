"""Puts this folder on sys.path (the suite runs with --import-mode=importlib) for
``pretext_test_helpers``, and seeds every test."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
