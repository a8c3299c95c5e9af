"""BaseAlgorithm's forward contract and the momentum (EMA) helpers."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from selfsup_models.algorithm import BaseAlgorithm, check_views, make_momentum_copy, momentum_update_


class Echo(BaseAlgorithm):
    def forward_train(self, img, **kwargs):
        return {"loss": self.backbone(img)[-1].sum(), "kwargs": sorted(kwargs)}


class Backbone(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(2, 3)

    def forward(self, x):
        return (self.fc(x),)


def test_forward_modes():
    model = Echo(Backbone())
    x = torch.ones(4, 2)
    out = model(x, mode="train", label=None, idx=None)
    assert out["kwargs"] == ["idx", "label"]
    assert model(x, mode="extract")[0].shape == (4, 3)
    assert model(x, mode="test")["feat"].shape == (4, 3)
    with pytest.raises(ValueError, match="unknown mode 'predict'"):
        model(x, mode="predict")


def test_check_views():
    a = torch.zeros(1)
    assert len(check_views("X", [a, a], 2)) == 2
    with pytest.raises(ValueError, match="X: expects 2 views per sample, got 3"):
        check_views("X", [a, a, a], 2)
    with pytest.raises(ValueError, match="at least 2 views"):
        check_views("X", a, at_least=2)


def test_momentum_copy_and_update_follow_the_ema_rule():
    torch.manual_seed(0)
    online = nn.Linear(3, 2)
    target = make_momentum_copy(online)
    assert all(not p.requires_grad for p in target.parameters())
    assert torch.equal(target.weight, online.weight)
    before = target.weight.clone()
    with torch.no_grad():
        online.weight.add_(1.0)
    momentum_update_(target, online, 0.9)
    assert torch.allclose(target.weight, 0.9 * before + 0.1 * online.weight)
    frozen = target.weight.clone()
    momentum_update_(target, online, 1.0)
    assert torch.equal(target.weight, frozen)
