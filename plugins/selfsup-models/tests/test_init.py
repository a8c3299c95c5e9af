from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from selfsup_models.init import BaseModule, InitReport, apply_init_cfg


def _net() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8, 4))


def test_constant_exact_and_layer_filter():
    net = _net()
    before_linear = net[4].weight.clone()
    report = apply_init_cfg(net, {"type": "Constant", "val": 0.5, "bias": 0.25, "layer": "Conv2d"})
    assert torch.equal(net[0].weight, torch.full_like(net[0].weight, 0.5))
    assert torch.equal(net[0].bias, torch.full((8,), 0.25))
    assert torch.equal(net[4].weight, before_linear)  # not a Conv2d: untouched
    assert torch.equal(net[1].weight, torch.ones(8))  # BatchNorm untouched
    assert report.initialized == ["Constant on 1 modules"]


def test_base_class_names_match():
    net = _net()
    apply_init_cfg(net, {"type": "Constant", "val": 3, "layer": ["_BatchNorm"]})
    assert torch.equal(net[1].weight, torch.full((8,), 3.0))
    assert torch.equal(net[0].weight.abs().max() < 3, torch.tensor(True))


def test_without_layer_every_weighted_module():
    net = _net()
    apply_init_cfg(net, {"type": "Constant", "val": 2})
    for index in (0, 1, 4):
        assert torch.equal(net[index].weight, torch.full_like(net[index].weight, 2.0))


def test_list_order_matters():
    net = _net()
    apply_init_cfg(net, [{"type": "Constant", "val": 1, "layer": "Linear"}, {"type": "Constant", "val": 2, "layer": "Linear"}])
    assert torch.equal(net[4].weight, torch.full((4, 8), 2.0))
    apply_init_cfg(net, [{"type": "Constant", "val": 2, "layer": "Linear"}, {"type": "Constant", "val": 1, "layer": "Linear"}])
    assert torch.equal(net[4].weight, torch.full((4, 8), 1.0))


def test_normal_std_and_mean():
    torch.manual_seed(0)
    lin = nn.Linear(500, 400)
    apply_init_cfg(lin, {"type": "Normal", "mean": 1.0, "std": 0.02, "bias": 0})
    assert abs(lin.weight.std().item() - 0.02) < 0.001
    assert abs(lin.weight.mean().item() - 1.0) < 0.001
    assert torch.equal(lin.bias, torch.zeros(400))


def test_uniform_truncnormal_kaiming_xavier():
    torch.manual_seed(0)
    lin = nn.Linear(300, 200)
    apply_init_cfg(lin, {"type": "Uniform", "a": -0.5, "b": 0.25})
    assert lin.weight.min() >= -0.5 and lin.weight.max() <= 0.25 and lin.weight.min() < -0.49
    apply_init_cfg(lin, {"type": "TruncNormal", "std": 1.0, "a": -0.1, "b": 0.1})
    assert lin.weight.abs().max() <= 0.1
    conv = nn.Conv2d(16, 64, 3)
    apply_init_cfg(conv, {"type": "Kaiming", "mode": "fan_out", "nonlinearity": "relu"})
    expected = math.sqrt(2.0 / (64 * 9))
    assert abs(conv.weight.std().item() - expected) / expected < 0.05
    apply_init_cfg(conv, {"type": "Kaiming", "mode": "fan_in", "distribution": "uniform"})
    bound = math.sqrt(2.0) * math.sqrt(3.0 / (16 * 9))
    assert conv.weight.abs().max() <= bound + 1e-6
    apply_init_cfg(lin, {"type": "Xavier", "gain": 2.0, "distribution": "uniform"})
    assert lin.weight.abs().max() <= 2.0 * math.sqrt(6.0 / 500) + 1e-6


def test_bias_prob():
    lin = nn.Linear(4, 3)
    apply_init_cfg(lin, {"type": "Normal", "std": 0.01, "bias_prob": 0.01})
    torch.testing.assert_close(lin.bias, torch.full((3,), -math.log(99.0)))


def test_override_named_child():
    net = nn.Sequential()
    net.add_module("body", nn.Linear(3, 3))
    net.add_module("fc", nn.Linear(3, 2))
    apply_init_cfg(net, {"type": "Constant", "val": 1, "layer": "Linear", "override": {"name": "fc", "val": 5}})
    assert torch.equal(net.body.weight, torch.ones(3, 3))
    assert torch.equal(net.fc.weight, torch.full((2, 3), 5.0))
    with pytest.raises(ValueError, match="'fcc' is not a sub-module.*did you mean 'fc'"):
        apply_init_cfg(net, {"type": "Constant", "val": 1, "override": {"name": "fcc"}})


def test_bad_cfgs():
    with pytest.raises(ValueError, match=r"unknown init type 'Kaimin'; did you mean 'Kaiming'\?; known types: Kaiming"):
        apply_init_cfg(_net(), {"type": "Kaimin"})
    with pytest.raises(ValueError, match=r"Normal does not take 'sdt'"):
        apply_init_cfg(_net(), {"type": "Normal", "sdt": 1})
    with pytest.raises(ValueError, match="Constant needs 'val'"):
        apply_init_cfg(_net(), {"type": "Constant"})
    with pytest.raises(ValueError, match="distribution must be"):
        apply_init_cfg(_net(), {"type": "Kaiming", "distribution": "gauss"})
    assert apply_init_cfg(_net(), None) == InitReport()


# ----------------------------------------------------------------------------- Pretrained


def test_pretrained_raw_and_wrapped(tmp_path):
    src, dst = _net(), _net()
    raw = tmp_path / "raw.pth"
    torch.save(src.state_dict(), raw)
    report = apply_init_cfg(dst, {"type": "Pretrained", "checkpoint": str(raw)})
    assert sorted(report.loaded) == sorted(src.state_dict())
    assert report.missing == [] and report.unexpected == [] and report.sources == [str(raw)]
    for key, value in src.state_dict().items():
        assert torch.equal(dst.state_dict()[key], value)

    wrapped = tmp_path / "wrapped.pth"
    state = {f"module.backbone.{k}": v for k, v in src.state_dict().items()}
    state["module.head.w"] = torch.zeros(2)
    torch.save({"state_dict": state, "epoch": 3, "meta": {"x": 1}}, wrapped)
    dst = _net()
    report = apply_init_cfg(dst, {"type": "Pretrained", "checkpoint": str(wrapped), "prefix": "backbone."})
    assert report.missing == [] and report.unexpected == []
    assert torch.equal(dst[0].weight, src[0].weight)


def test_pretrained_reports_missing_unexpected_and_mismatched(tmp_path):
    src = _net()
    state = src.state_dict()
    del state["4.bias"]
    state["extra.weight"] = torch.zeros(1)
    state["0.weight"] = torch.zeros(8, 3, 5, 5)
    path = tmp_path / "c.pth"
    torch.save({"model": state}, path)
    dst = _net()
    old = dst[0].weight.clone()
    report = apply_init_cfg(dst, {"type": "Pretrained", "checkpoint": str(path)})
    assert report.missing == ["4.bias"]
    assert report.unexpected == ["extra.weight"]
    assert report.mismatched == ["0.weight: checkpoint (8, 3, 5, 5) vs model (8, 3, 3, 3)"]
    assert torch.equal(dst[0].weight, old)
    assert "4.bias" not in report.loaded and "4.weight" in report.loaded
    with pytest.raises(ValueError, match=r"\(strict\).*missing keys \(1\): 4\.bias.*unexpected keys \(1\): extra\.weight"):
        apply_init_cfg(_net(), {"type": "Pretrained", "checkpoint": str(path), "strict": True})


def test_pretrained_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"^init_cfg Pretrained .*nope\.pth: no such checkpoint file"):
        apply_init_cfg(_net(), {"type": "Pretrained", "checkpoint": str(tmp_path / "nope.pth")})
    with pytest.raises(FileNotFoundError, match="^init_cfg Pretrained zoo://x: no installed plugin resolves it"):
        apply_init_cfg(_net(), {"type": "Pretrained", "checkpoint": "zoo://x"})
    path = tmp_path / "c.pth"
    torch.save({"state_dict": {"backbone.w": torch.zeros(1)}}, path)
    with pytest.raises(ValueError, match=r"no key of .* starts with prefix 'encoder\.'; prefixes found: backbone\."):
        apply_init_cfg(_net(), {"type": "Pretrained", "checkpoint": str(path), "prefix": "encoder."})
    with pytest.raises(ValueError, match="Pretrained does not take 'prefx'"):
        apply_init_cfg(_net(), {"type": "Pretrained", "checkpoint": str(path), "prefx": "a"})


def test_pretrained_refuses_pickled_objects(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "obj": _net()}, path)
    with pytest.raises(ValueError, match="weights_only=True"):
        apply_init_cfg(_net(), {"type": "Pretrained", "checkpoint": str(path)})


def test_pretrained_through_resolve_checkpoint_hook(tmp_path):
    from selfsup_core.hookspecs import hookimpl
    from selfsup_core.session import plugin_manager as get_plugin_manager

    src = _net()
    path = tmp_path / "zoo.pth"
    torch.save(src.state_dict(), path)

    class Zoo:
        @hookimpl
        def selfsup_resolve_checkpoint(self, uri):
            return str(path) if uri == "zoo://net" else None

    manager = get_plugin_manager()
    plugin = Zoo()
    manager.register(plugin)
    try:
        dst = _net()
        report = apply_init_cfg(dst, {"type": "Pretrained", "checkpoint": "zoo://net"})
    finally:
        manager.unregister(plugin)
    assert report.sources == [str(path)]
    assert torch.equal(dst[4].weight, src[4].weight)


def test_base_module_applies_default_then_init_cfg():
    class Tiny(BaseModule):
        def __init__(self, init_cfg=None):
            super().__init__(init_cfg=init_cfg)
            self.fc = nn.Linear(2, 2)
            self.init_weights()

        def default_init(self):
            nn.init.constant_(self.fc.weight, 7.0)

    assert torch.equal(Tiny().fc.weight, torch.full((2, 2), 7.0))
    model = Tiny(init_cfg=[{"type": "Constant", "val": 1, "layer": "Linear"}])
    assert torch.equal(model.fc.weight, torch.ones(2, 2))
    assert model.init_report.initialized == ["Constant on 1 modules"]
