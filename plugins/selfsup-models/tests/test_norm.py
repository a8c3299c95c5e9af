from __future__ import annotations

import pytest
import torch
from torch import nn

from selfsup_models.norm import BatchNormNd, LayerNorm2d, build_norm_layer, revert_sync_batchnorm


@pytest.mark.parametrize(
    ("cfg", "dim", "cls"),
    [
        ({"type": "BN"}, 2, nn.BatchNorm2d),
        ({"type": "BN"}, 1, nn.BatchNorm1d),
        ({"type": "BN1d"}, 2, nn.BatchNorm1d),
        ({"type": "BN2d"}, 1, nn.BatchNorm2d),
        ({"type": "SyncBN"}, 2, nn.SyncBatchNorm),
        ({"type": "GN", "num_groups": 2}, 2, nn.GroupNorm),
        ({"type": "LN"}, 2, LayerNorm2d),
        ({"type": "LN"}, 1, nn.LayerNorm),
        ({"type": "IN"}, 2, nn.InstanceNorm2d),
        ({"type": "IN"}, 1, nn.InstanceNorm1d),
        ({"type": "Identity"}, 2, nn.Identity),
        (None, 2, nn.Identity),
    ],
)
def test_types(cfg, dim, cls):
    layer = build_norm_layer(cfg, 4, dim=dim)
    assert type(layer) is cls


def test_options_pass_through_and_cfg_not_modified():
    cfg = {"type": "BN", "eps": 1e-3, "momentum": 0.03, "requires_grad": False}
    layer = build_norm_layer(cfg, 8)
    assert layer.eps == 1e-3 and layer.momentum == 0.03
    assert all(not p.requires_grad for p in layer.parameters())
    assert cfg == {"type": "BN", "eps": 1e-3, "momentum": 0.03, "requires_grad": False}
    gn = build_norm_layer({"type": "GN", "num_groups": 4, "affine": False}, 8)
    assert gn.num_groups == 4 and gn.weight is None


def test_layernorm2d_normalises_over_channels():
    x = torch.randn(2, 4, 3, 5)
    ln = build_norm_layer({"type": "LN", "eps": 1e-6}, 4)
    expected = nn.functional.layer_norm(x.permute(0, 2, 3, 1), (4,), eps=1e-6).permute(0, 3, 1, 2)
    torch.testing.assert_close(ln(x), expected)
    # every (n, h, w) position has mean 0 over the channels
    torch.testing.assert_close(ln(x).mean(1), torch.zeros(2, 3, 5), atol=1e-5, rtol=0)


def test_unknown_type_lists_known_types():
    with pytest.raises(ValueError, match=r"unknown norm type 'BatchNorm'.*known types: BN, BN1d.*GN, LN, IN"):
        build_norm_layer({"type": "BatchNorm"}, 4)


def test_bad_options():
    with pytest.raises(ValueError, match="GN needs num_groups"):
        build_norm_layer({"type": "GN"}, 4)
    with pytest.raises(ValueError, match="does not divide 6 channels"):
        build_norm_layer({"type": "GN", "num_groups": 4}, 6)
    with pytest.raises(ValueError, match=r"BN does not take 'eps_'; did you mean 'eps'\?"):
        build_norm_layer({"type": "BN", "eps_": 1e-3}, 4)
    with pytest.raises(ValueError, match="has no 'type'"):
        build_norm_layer({"eps": 1e-3}, 4)


def test_revert_sync_batchnorm_keeps_state_and_accepts_any_dims():
    model = nn.Sequential(nn.Linear(3, 4), nn.SyncBatchNorm(4), nn.Sequential(nn.SyncBatchNorm(4)))
    with torch.no_grad():
        model[1].weight.fill_(2.0)
        model[1].running_mean.fill_(0.5)
    model[1].weight.requires_grad_(False)
    model.eval()
    reverted = revert_sync_batchnorm(model)
    assert reverted is model
    assert type(model[1]) is BatchNormNd and type(model[2][0]) is BatchNormNd
    assert torch.equal(model[1].weight, torch.full((4,), 2.0)) and not model[1].weight.requires_grad
    assert torch.equal(model[1].running_mean, torch.full((4,), 0.5))
    assert not model[1].training
    model.train()
    assert model(torch.randn(5, 3)).shape == (5, 4)
    assert model[1](torch.randn(2, 4, 3, 3)).shape == (2, 4, 3, 3)
