"""The step's GPU-ready parts, checked on the CPU: LARS's multi-tensor path, runner.compile = "auto"."""
from __future__ import annotations

import torch

from selfsup_core.api import LARS
from selfsup_core.engine.settings import read_settings
from selfsup_core.config import Config


def _params(seed: int) -> list[torch.nn.Parameter]:
    generator = torch.Generator().manual_seed(seed)
    shapes = [(16, 8), (16,), (4, 4, 3, 3), (4,), (10,)]
    return [torch.nn.Parameter(torch.randn(s, generator=generator)) for s in shapes]


def test_lars_foreach_equals_the_per_tensor_update_to_1e_6():
    runs = []
    for foreach in (True, False):
        params = _params(0)
        optimizer = LARS([{"params": params[:3]}, {"params": params[3:], "lars_exclude": True}], lr=0.3,
                         momentum=0.9, weight_decay=1e-4, eta=0.02, foreach=foreach)
        generator = torch.Generator().manual_seed(1)
        for _ in range(4):
            for p in params:
                p.grad = torch.randn(p.shape, generator=generator)
            params[4].grad.zero_()  # a zero gradient keeps the trust ratio at 1
            optimizer.step()
        runs.append([p.detach().clone() for p in params])
    for a, b in zip(*runs):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_runner_compile_accepts_auto():
    config = Config({"runner": {"max_epochs": 1, "compile": "auto"}, "data": {"workers_per_gpu": "auto",
                     "resident": "auto", "resident_memory_share": 0.5, "train": {"type": "X"}}}, filename="c.toml")
    settings = read_settings(config)
    assert (settings.compile, settings.workers_per_gpu, settings.resident, settings.resident_memory_share) == (
        "auto", "auto", "auto", 0.5)
