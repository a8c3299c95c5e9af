from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from selfsup_core.build import build
from selfsup_core.errors import ConfigError


def _resnet(**cfg):
    return build({"type": "ResNet", **cfg}, "backbones")


@pytest.mark.parametrize(
    ("depth", "size", "stem_type", "expected"),
    [
        (18, 64, "imagenet", [(64, 16), (64, 16), (128, 8), (256, 4), (512, 2)]),
        (18, 32, "cifar", [(64, 32), (64, 32), (128, 16), (256, 8), (512, 4)]),
        (50, 64, "imagenet", [(64, 16), (256, 16), (512, 8), (1024, 4), (2048, 2)]),
        (50, 16, "cifar", [(64, 16), (256, 16), (512, 8), (1024, 4), (2048, 2)]),
    ],
)
def test_resnet_shapes_at_every_out_index(depth, size, stem_type, expected):
    model = _resnet(depth=depth, out_indices=[0, 1, 2, 3, 4], stem_type=stem_type).eval()
    with torch.no_grad():
        outs = model(torch.randn(2, 3, size, size))
    assert isinstance(outs, tuple)
    assert [(o.shape[1], o.shape[2]) for o in outs] == expected
    assert all(o.shape[0] == 2 and o.shape[2] == o.shape[3] for o in outs)
    assert model.out_channels == expected[-1][0]
    assert model.feature_channels == tuple(c for c, _ in expected)


def test_resnet_defaults_order_and_channels():
    model = _resnet(depth=18, in_channels=1, out_indices=[4, 2]).eval()
    assert not hasattr(model, "fc")
    outs = model(torch.randn(1, 1, 32, 32))
    assert [o.shape[1] for o in outs] == [512, 128]
    assert model.out_channels == 128
    default = _resnet(depth=18).eval()
    assert default.out_indices == (4,) and default.out_channels == 512
    assert len(default(torch.randn(1, 3, 32, 32))) == 1


def test_resnet_v1d_and_resnext():
    v1d = build({"type": "ResNetV1d", "depth": 18, "out_indices": [0, 4]}, "backbones").eval()
    keys = v1d.state_dict().keys()
    assert "stem.0.weight" in keys and "stem.6.weight" in keys and "conv1.weight" not in keys
    assert "layer2.0.downsample.1.weight" in keys and "layer2.0.downsample.2.running_mean" in keys
    assert isinstance(v1d.layer2[0].downsample[0], nn.AvgPool2d)
    assert [tuple(o.shape) for o in v1d(torch.randn(1, 3, 32, 32))] == [(1, 64, 8, 8), (1, 512, 1, 1)]

    rx = build({"type": "ResNeXt", "depth": 50, "groups": 32, "width_per_group": 4}, "backbones").eval()
    assert rx.layer1[0].conv2.groups == 32 and rx.layer1[0].conv2.in_channels == 128
    with torch.device("meta"):  # keys only: skip the random init
        tv = torchvision.models.resnext50_32x4d()
    report_missing = [k for k in rx.state_dict() if k not in tv.state_dict()]
    assert report_missing == []
    assert rx(torch.randn(1, 3, 32, 32))[0].shape == (1, 2048, 1, 1)


def test_frozen_stages_no_grad_and_eval_after_train():
    model = _resnet(depth=18, frozen_stages=2, out_indices=[4])
    model.train()
    frozen = [model.conv1, model.bn1, model.layer1, model.layer2]
    for module in frozen:
        assert all(not p.requires_grad for p in module.parameters())
        assert all(not m.training for m in module.modules())
    assert model.layer3.training and model.layer4.training
    assert all(p.requires_grad for p in model.layer3.parameters())
    running = model.bn1.running_mean.clone()
    model(torch.randn(2, 3, 32, 32))[0].sum().backward()
    assert torch.equal(model.bn1.running_mean, running)  # eval: statistics untouched
    assert all(p.grad is None for m in frozen for p in m.parameters())
    assert all(p.grad is not None for p in model.layer4.parameters())


def test_frozen_stem_only():
    model = _resnet(depth=18, frozen_stages=0).train()
    assert not model.conv1.weight.requires_grad and not model.bn1.training
    assert model.layer1[0].conv1.weight.requires_grad and model.layer1.training


def test_norm_eval_keeps_bn_in_eval():
    model = _resnet(depth=18, norm_eval=True).train()
    bns = [m for m in model.modules() if isinstance(m, _BatchNorm)]
    assert bns and all(not bn.training for bn in bns)
    assert model.training and model.conv1.weight.requires_grad


def test_zero_init_residual():
    model = _resnet(depth=50, zero_init_residual=True)
    blocks = [b for stage in model.stages() for b in stage]
    assert len(blocks) == 16
    assert all(torch.equal(b.bn3.weight, torch.zeros_like(b.bn3.weight)) for b in blocks)
    assert all(torch.equal(b.bn2.weight, torch.ones_like(b.bn2.weight)) for b in blocks)
    model18 = _resnet(depth=18, zero_init_residual=True)
    assert all(torch.equal(b.bn2.weight, torch.zeros_like(b.bn2.weight)) for s in model18.stages() for b in s)
    assert all(torch.equal(b.bn1.weight, torch.ones_like(b.bn1.weight)) for s in model18.stages() for b in s)
    plain = _resnet(depth=18)
    assert torch.equal(plain.layer1[0].bn2.weight, torch.ones(64))


def _randomise_bn_stats(model: nn.Module) -> None:
    torch.manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.1, 0.1)


def _torchvision_features(tv: nn.Module, x: torch.Tensor) -> torch.Tensor:
    x = tv.maxpool(tv.relu(tv.bn1(tv.conv1(x))))
    return tv.layer4(tv.layer3(tv.layer2(tv.layer1(x))))


def test_torchvision_resnet50_state_dict_loads_with_identical_outputs(tmp_path):
    torch.manual_seed(0)
    tv = torchvision.models.resnet50()  # random init, nothing downloaded
    _randomise_bn_stats(tv)
    tv.eval()
    raw = tmp_path / "tv.pth"
    torch.save(tv.state_dict(), raw)
    wrapped = tmp_path / "wrapped.pth"
    torch.save({"state_dict": {f"backbone.{k}": v for k, v in tv.state_dict().items()}, "epoch": 1}, wrapped)
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        expected = _torchvision_features(tv, x)

    for init_cfg in (
        {"type": "Pretrained", "checkpoint": str(raw)},
        {"type": "Pretrained", "checkpoint": str(wrapped), "prefix": "backbone."},
    ):
        model = _resnet(depth=50, init_cfg=init_cfg).eval()
        report = model.init_report
        assert report.missing == []
        assert sorted(report.unexpected) == ["fc.bias", "fc.weight"]
        assert report.mismatched == []
        with torch.no_grad():
            out = model(x)[0]
        torch.testing.assert_close(out, expected, rtol=0, atol=0)

    # and back: our state dict fills a torchvision resnet50 (all but fc)
    result = tv.load_state_dict(model.state_dict(), strict=False)
    assert sorted(result.missing_keys) == ["fc.bias", "fc.weight"] and result.unexpected_keys == []


def test_pretrained_strict_failure_lists_keys(tmp_path):
    tv = torchvision.models.resnet18()
    path = tmp_path / "tv18.pth"
    torch.save(tv.state_dict(), path)
    with pytest.raises(ConfigError, match=r"could not be built.*unexpected keys \(2\): fc\.weight, fc\.bias"):
        _resnet(depth=18, init_cfg={"type": "Pretrained", "checkpoint": str(path), "strict": True})


def test_missing_checkpoint_is_one_line(tmp_path):
    with pytest.raises(ConfigError) as info:
        _resnet(depth=18, init_cfg={"type": "Pretrained", "checkpoint": str(tmp_path / "absent.pth")})
    message = str(info.value)
    assert "\n" not in message and "absent.pth" in message and "no such checkpoint file" in message


@pytest.mark.parametrize(
    ("norm_cfg", "cls"),
    [({"type": "GN", "num_groups": 8}, nn.GroupNorm), ({"type": "SyncBN"}, nn.SyncBatchNorm),
     ({"type": "LN"}, nn.LayerNorm)],
)
def test_norm_cfg(norm_cfg, cls):
    model = _resnet(depth=18, norm_cfg=norm_cfg)
    norms = [model.bn1, model.layer1[0].bn1, model.layer2[0].downsample[1]]
    assert all(isinstance(m, cls) for m in norms)
    if cls is not nn.SyncBatchNorm:  # SyncBN needs a process group to run
        assert model.eval()(torch.randn(1, 3, 32, 32))[0].shape == (1, 512, 1, 1)


def test_norm_cfg_requires_grad_false():
    model = _resnet(depth=18, norm_cfg={"type": "BN", "requires_grad": False})
    assert not model.bn1.weight.requires_grad and model.conv1.weight.requires_grad


def test_init_cfg_applies_after_defaults():
    model = _resnet(depth=18, init_cfg=[{"type": "Constant", "val": 0.5, "layer": "_BatchNorm"}])
    assert torch.equal(model.layer1[0].bn2.weight, torch.full((64,), 0.5))


def test_with_cp_matches_plain():
    torch.manual_seed(0)
    plain = _resnet(depth=18, stem_type="cifar")
    cp = _resnet(depth=18, stem_type="cifar", with_cp=True)
    cp.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 16, 16)
    a, b = plain(x)[0], cp(x)[0]
    torch.testing.assert_close(a, b)
    b.sum().backward()
    assert cp.conv1.weight.grad is not None


def test_config_errors():
    with pytest.raises(ConfigError, match=r"dept: unknown argument of ResNet.*did you mean 'depth'\?"):
        build({"type": "ResNet", "depth": 18, "dept": 1}, "backbones")
    with pytest.raises(ConfigError, match=r"ValueError: ResNet: depth must be one of 18, 34, 50, 101, 152, got 19"):
        build({"type": "ResNet", "depth": 19}, "backbones")
    with pytest.raises(ConfigError, match=r"out_indices must be in 0\.\.4"):
        build({"type": "ResNet", "depth": 18, "out_indices": [5]}, "backbones")
    with pytest.raises(ConfigError, match="stem_type must be one of imagenet, cifar"):
        build({"type": "ResNet", "depth": 18, "stem_type": "small"}, "backbones")
    with pytest.raises(ConfigError, match="ResNeXt: depth must be one of 50, 101, 152"):
        build({"type": "ResNeXt", "depth": 18}, "backbones")
    with pytest.raises(ConfigError, match="unknown norm type 'BNN'"):
        build({"type": "ResNet", "depth": 18, "norm_cfg": {"type": "BNN"}}, "backbones")
