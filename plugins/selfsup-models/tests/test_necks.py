"""Necks: shapes, layer composition, hand computations, building from config tables."""
from __future__ import annotations

import math

import pytest
import torch
from selfsup_core.build import build
from selfsup_core.errors import ConfigError
from torch import nn

from selfsup_models.necks import NonLinearNeck
from selfsup_models.norm import revert_sync_batchnorm

BN = {"type": "BN"}


def neck(**table):
    return build(table, "necks")


# -- NonLinearNeck ---------------------------------------------------------------------------
def test_nonlinear_neck_three_layers_composition_and_shape():
    m = neck(type="NonLinearNeck", in_channels=6, hid_channels=8, out_channels=4, num_layers=3, norm_cfg=BN)
    names = [n for n, _ in m.named_children() if n != "relu"]
    assert names == ["fc0", "bn0", "fc1", "bn1", "fc2", "bn2"]
    assert (m.fc0.in_features, m.fc0.out_features) == (6, 8)
    assert (m.fc1.in_features, m.fc1.out_features) == (8, 8)
    assert (m.fc2.in_features, m.fc2.out_features) == (8, 4)
    assert all(isinstance(getattr(m, f"bn{i}"), nn.BatchNorm1d) for i in range(3))
    assert m.fc0.bias is None and m.fc1.bias is None and m.fc2.bias is None  # with_bias / with_last_bias false
    assert m.bn2.weight is not None  # affine by default
    out = m((torch.randn(5, 6, 3, 3),))
    assert isinstance(out, list) and len(out) == 1 and out[0].shape == (5, 4)


def test_nonlinear_neck_last_bn_switches():
    no_last = neck(type="NonLinearNeck", in_channels=6, hid_channels=8, out_channels=4, num_layers=3,
                   with_last_bn=False, with_bias=True, with_last_bias=True, norm_cfg=BN)
    assert not hasattr(no_last, "bn2") and no_last.bn_names == ["bn1", None]
    assert no_last.fc0.bias is not None and no_last.fc1.bias is not None and no_last.fc2.bias is not None
    no_affine = neck(type="NonLinearNeck", in_channels=6, hid_channels=8, out_channels=4, num_layers=3,
                     with_last_bn_affine=False, norm_cfg=BN)
    assert no_affine.bn2.weight is None and no_affine.bn2.bias is None and not no_affine.bn2.affine
    assert no_affine.bn1.weight is not None and no_affine.bn0.weight is not None
    assert "bn2.weight" not in no_affine.state_dict() and "bn2.running_mean" in no_affine.state_dict()


def test_nonlinear_neck_hand_computation_constant_init():
    # fc weights 1, bias 0; rows [1, 2] and [3, 5] -> fc0: [3, 3], [8, 8]
    # BN (train): mean 5.5, biased var 6.25 -> [-c, -c], [c, c], c = 2.5 / sqrt(6.25 + 1e-5)
    # relu -> [0, 0], [c, c]; fc1 (no bias) -> [0], [2c]
    m = NonLinearNeck(2, 2, 1, with_bias=True, with_last_bn=False, with_avg_pool=False, norm_cfg=BN,
                      init_cfg={"type": "Constant", "val": 1.0, "bias": 0.0, "layer": "Linear"})
    out = m([torch.tensor([[1.0, 2.0], [3.0, 5.0]])])[0]
    c = 2.5 / math.sqrt(6.25 + 1e-5)
    torch.testing.assert_close(out, torch.tensor([[0.0], [2 * c]]))


def test_nonlinear_neck_default_syncbn_runs_on_cpu_after_revert():
    m = neck(type="NonLinearNeck", in_channels=4, hid_channels=8, out_channels=2)
    assert isinstance(m.bn0, nn.SyncBatchNorm)  # MMSelfSup's default norm_cfg
    m = revert_sync_batchnorm(m)  # what the trainer does outside torch.distributed
    assert not any(isinstance(x, nn.SyncBatchNorm) for x in m.modules())
    assert m([torch.randn(3, 4, 2, 2)])[0].shape == (3, 2)


def test_nonlinear_neck_vit_backbone_uses_cls_token():
    m = neck(type="NonLinearNeck", in_channels=4, hid_channels=8, out_channels=2, vit_backbone=True,
             with_avg_pool=False, norm_cfg=BN).eval()
    patches, cls = torch.randn(3, 4, 2, 2), torch.randn(3, 4)
    from_pair = m([[patches, cls]])[0]  # MMSelfSup ViT output: [patch_tokens, cls_token]
    tokens = torch.cat([cls[:, None], torch.randn(3, 5, 4)], dim=1)  # (N, L, C), cls first
    from_tokens = m([tokens])[0]
    m.vit_backbone = False
    torch.testing.assert_close(from_pair, m([cls])[0])
    torch.testing.assert_close(from_tokens, m([cls])[0])


# -- other necks ----------------------------------------------------------------------------
def test_mocov2_neck_hand_computation():
    # channel means 1 and 2; fc weights 0.5, bias 0.1: hidden = 0.5 * 3 + 0.1 = 1.6 (x3)
    # out = 0.5 * (3 * 1.6) + 0.1 = 2.5
    m = neck(type="MoCoV2Neck", in_channels=2, hid_channels=3, out_channels=1,
             init_cfg={"type": "Constant", "val": 0.5, "bias": 0.1, "layer": "Linear"})
    x = torch.tensor([[[[1.0, 1.0], [1.0, 1.0]], [[0.0, 4.0], [2.0, 2.0]]]])
    torch.testing.assert_close(m((x,))[0], torch.tensor([[2.5]]))
    assert [type(layer) for layer in m.mlp] == [nn.Linear, nn.ReLU, nn.Linear]


def test_linear_neck_shapes_and_pooling():
    m = neck(type="LinearNeck", in_channels=3, out_channels=5)
    assert m([torch.randn(2, 3, 4, 4)])[0].shape == (2, 5)
    flat = neck(type="LinearNeck", in_channels=3, out_channels=5, with_avg_pool=False)
    assert flat([torch.randn(2, 3)])[0].shape == (2, 5)


def test_odc_neck_composition():
    m = neck(type="ODCNeck", in_channels=6, hid_channels=8, out_channels=3, norm_cfg=BN)
    assert isinstance(m.bn0, nn.BatchNorm1d) and not m.bn0.affine and m.bn0.momentum == 0.001
    assert isinstance(m.drop, nn.Dropout) and m.fc1.out_features == 3
    out = m([torch.randn(4, 6, 3, 3)])[0]
    assert out.shape == (4, 3) and (out >= 0).all()  # ends with relu


def test_relative_loc_neck_composition_and_default_init():
    m = neck(type="RelativeLocNeck", in_channels=4, out_channels=16)
    assert m.fc.in_features == 8 and m.fc.out_features == 16  # two patches concatenated
    assert isinstance(m.bn, nn.BatchNorm1d) and m.bn.momentum == 0.003
    assert torch.count_nonzero(m.fc.bias) == 0 and m.fc.weight.std() < 0.05  # N(0, 0.01)
    m.eval()
    assert m([torch.randn(3, 8, 2, 2)])[0].shape == (3, 16)


def test_avgpool2d_neck_values():
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    out = neck(type="AvgPool2dNeck")([x])[0]
    assert out.shape == (2, 3, 1, 1)
    torch.testing.assert_close(out, x.mean(dim=(2, 3), keepdim=True))
    assert neck(type="AvgPool2dNeck", output_size=2)([x])[0].shape == (2, 3, 2, 2)


def test_swav_neck_multi_crop_concatenation():
    m = neck(type="SwAVNeck", in_channels=4, hid_channels=8, out_channels=3, norm_cfg=BN)
    large, small = torch.randn(2 * 2, 4, 5, 5), torch.randn(2 * 3, 4, 2, 2)  # 2 images: 2 large + 3 small crops
    out = m([(large,), (small,)])[0]
    assert out.shape == (10, 3)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(10))
    m.eval()
    # order is preserved: the first 4 rows are the large crops
    torch.testing.assert_close(m([(large,), (small,)])[0][:4], m([(large,)])[0])
    only_linear = neck(type="SwAVNeck", in_channels=4, hid_channels=0, out_channels=3)
    assert isinstance(only_linear.projection_neck, nn.Linear)
    no_projection = neck(type="SwAVNeck", in_channels=4, hid_channels=0, out_channels=0)
    torch.testing.assert_close(no_projection([(large,)])[0], nn.functional.normalize(large.mean(dim=(2, 3)), dim=1))


def test_densecl_neck_outputs():
    m = neck(type="DenseCLNeck", in_channels=4, hid_channels=8, out_channels=3)
    global_out, dense, pooled = m([torch.randn(2, 4, 5, 5)])
    assert global_out.shape == (2, 3) and dense.shape == (2, 3, 25) and pooled.shape == (2, 3)
    torch.testing.assert_close(pooled, dense.mean(dim=2))
    gridded = neck(type="DenseCLNeck", in_channels=4, hid_channels=8, out_channels=3, num_grid=2)
    assert gridded([torch.randn(2, 4, 5, 5)])[1].shape == (2, 3, 4)


# -- errors -----------------------------------------------------------------------------------
def test_wrong_argument_from_toml_is_config_error_with_did_you_mean():
    with pytest.raises(ConfigError) as info:
        build({"type": "NonLinearNeck", "in_channels": 4, "hid_channel": 8, "out_channels": 2}, "necks")
    assert "did you mean 'hid_channels'" in str(info.value)


def test_bad_norm_cfg_is_config_error():
    with pytest.raises(ConfigError, match="BN"):
        build({"type": "NonLinearNeck", "in_channels": 4, "hid_channels": 8, "out_channels": 2,
               "norm_cfg": {"type": "BM"}}, "necks")


def test_several_feature_maps_rejected_with_hint():
    m = neck(type="LinearNeck", in_channels=3, out_channels=2)
    with pytest.raises(ValueError, match="out_indices"):
        m((torch.randn(2, 3, 2, 2), torch.randn(2, 3, 2, 2)))
