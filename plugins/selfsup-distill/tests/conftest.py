"""Shared fixtures of the selfsup-distill tests."""
from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def one_thread():
    """The tests' models are tiny: one thread is faster than several competing for a busy CPU."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
