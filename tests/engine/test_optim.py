"""LARS against hand computations; build_optimizer's param groups and errors."""
from __future__ import annotations

import io
import math

import pytest
import torch
from torch import nn

from selfsup_core.config import Config
from selfsup_core.api import LARS
from selfsup_core.engine.optim import build_optimizer, layer_id_for_vit
from selfsup_core.errors import ConfigError


def _vec(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def _norm(values: list[float]) -> float:
    return math.sqrt(sum(v * v for v in values))


def _lars_reference(w, g, buf, lr, wd, eta, momentum, exclude, eps=1e-8):
    """One LARS step in plain Python floats; returns (new w, new buf)."""
    w_norm, g_norm = _norm(w), _norm(g)
    trust = 1.0
    if not exclude and w_norm > 0 and g_norm > 0:
        trust = eta * w_norm / (g_norm + wd * w_norm + eps)
    v = [(gi + wd * wi) * lr * trust for gi, wi in zip(g, w)]
    buf = v if buf is None else [momentum * b + vi for b, vi in zip(buf, v)]
    return [wi - bi for wi, bi in zip(w, buf)], buf


@pytest.mark.parametrize("foreach", [True, False])
def test_lars_two_steps_match_hand_computation(foreach):
    a = nn.Parameter(_vec(3.0, 4.0))  # ||a|| = 5
    z = nn.Parameter(_vec(0.0, 0.0))  # zero weight: trust ratio 1
    b = nn.Parameter(_vec(1.0, -2.0))  # excluded: SGD with weight decay
    opt = LARS([{"params": [a, z]}, {"params": [b], "lars_exclude": True}],
               lr=0.2, momentum=0.9, weight_decay=0.1, eta=0.5, foreach=foreach)
    grads = {"a": [0.6, 0.8], "z": [1.0, 2.0], "b": [0.5, 0.5]}

    # step 1, worked by hand: trust(a) = 0.5 * 5 / (1 + 0.1 * 5) = 5/3,
    # v(a) = ([0.6, 0.8] + 0.1 * [3, 4]) * 0.2 * 5/3 = [0.3, 0.4]
    for p, name in ((a, "a"), (z, "z"), (b, "b")):
        p.grad = _vec(*grads[name])
    opt.step()
    assert a.tolist() == pytest.approx([2.7, 3.6], abs=1e-8)
    assert z.tolist() == pytest.approx([-0.2, -0.4], abs=1e-12)  # v = g * lr
    assert b.tolist() == pytest.approx([1 - 0.12, -2 - 0.06], abs=1e-12)  # (g + wd w) * lr

    # step 2 with a new lr: the lr is inside the momentum buffer (MMSelfSup/SimCLR LARS)
    ref = {"a": ([3.0, 4.0], None), "z": ([0.0, 0.0], None), "b": ([1.0, -2.0], None)}
    for lr in (0.2, 0.1):
        for name in ref:
            w, buf = ref[name]
            ref[name] = _lars_reference(w, grads[name], buf, lr, 0.1, 0.5, 0.9, exclude=name == "b")
    for group in opt.param_groups:
        group["lr"] = 0.1
    for p, name in ((a, "a"), (z, "z"), (b, "b")):
        p.grad = _vec(*grads[name])
    opt.step()
    for p, name in ((a, "a"), (z, "z"), (b, "b")):
        assert p.tolist() == pytest.approx(ref[name][0], abs=1e-12), name
        assert opt.state[p]["momentum_buffer"].tolist() == pytest.approx(ref[name][1], abs=1e-12), name
    # trust(a) at step 2 = 0.5 * 4.5 / (1 + 0.45)
    expected_v = [(g + 0.1 * w) * 0.1 * (2.25 / 1.45) for g, w in zip(grads["a"], [2.7, 3.6])]
    assert ref["a"][1] == pytest.approx([0.9 * 0.3 + expected_v[0], 0.9 * 0.4 + expected_v[1]], abs=1e-8)


def test_lars_excluded_group_equals_sgd_at_constant_lr():
    torch.manual_seed(0)
    start = torch.randn(5, 3)
    p1, p2 = nn.Parameter(start.clone()), nn.Parameter(start.clone())
    lars = LARS([p1], lr=0.05, momentum=0.9, weight_decay=1e-3)
    lars.param_groups[0]["lars_exclude"] = True
    sgd = torch.optim.SGD([p2], lr=0.05, momentum=0.9, weight_decay=1e-3)
    for _ in range(3):
        grad = torch.randn(5, 3)
        p1.grad, p2.grad = grad.clone(), grad.clone()
        lars.step()
        sgd.step()
    torch.testing.assert_close(p1, p2)


def test_lars_nesterov_and_zero_grad_and_no_grad():
    w = nn.Parameter(_vec(3.0, 4.0))
    idle = nn.Parameter(_vec(1.0, 1.0))  # no gradient: untouched
    opt = LARS([w, idle], lr=1.0, momentum=0.5, eta=1.0, nesterov=True, eps=0.0)
    w.grad = _vec(0.0, 0.0)  # zero gradient: trust 1, v = 0
    opt.step()
    assert w.tolist() == [3.0, 4.0] and idle.tolist() == [1.0, 1.0]
    w.grad = _vec(0.3, 0.4)  # trust = 5 / 0.5 = 10, v = [3, 4], buf = 0.5 * 0 + v
    opt.step()
    assert w.tolist() == pytest.approx([3 - (3 + 0.5 * 3), 4 - (4 + 0.5 * 4)])


def test_lars_state_dict_round_trip_is_exact():
    torch.manual_seed(1)
    model_a = nn.Linear(4, 3)
    model_b = nn.Linear(4, 3)
    model_b.load_state_dict(model_a.state_dict())
    cfg = {"type": "LARS", "lr": 0.3, "weight_decay": 1e-4, "exclude_bias_and_norm": True}
    opt_a = build_optimizer(model_a, cfg)
    x = torch.randn(8, 4)
    for _ in range(2):
        opt_a.zero_grad()
        model_a(x).pow(2).sum().backward()
        opt_a.step()
    model_b.load_state_dict(model_a.state_dict())
    opt_b = build_optimizer(model_b, cfg)
    buffer = io.BytesIO()  # through a file, as a checkpoint does (a live state dict shares tensors)
    torch.save(opt_a.state_dict(), buffer)
    buffer.seek(0)
    opt_b.load_state_dict(torch.load(buffer, weights_only=True))
    assert opt_b.param_groups[1]["lars_exclude"] is True
    for model, opt in ((model_a, opt_a), (model_b, opt_b)):
        opt.zero_grad()
        model(x).pow(2).sum().backward()
        opt.step()
    for pa, pb in zip(model_a.parameters(), model_b.parameters()):
        assert torch.equal(pa, pb)


def test_lars_rejects_bad_values():
    with pytest.raises(ValueError, match="LARS: lr"):
        LARS([nn.Parameter(torch.ones(1))], lr=-0.1)
    with pytest.raises(ValueError, match="nesterov"):
        LARS([nn.Parameter(torch.ones(1))], lr=0.1, momentum=0.0, nesterov=True)


# -- build_optimizer ------------------------------------------------------------------------
class SmallNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3)
        self.bn1 = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 2)
        self.ln = nn.LayerNorm(2)
        self.frozen = nn.Parameter(torch.ones(2, 2), requires_grad=False)


def _groups_by_name(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, dict]:
    """parameter name -> its group's options (without params)."""
    names = {id(p): n for n, p in model.named_parameters()}
    out = {}
    for group in optimizer.param_groups:
        options = {k: v for k, v in group.items() if k != "params"}
        for p in group["params"]:
            out[names[id(p)]] = options
    return out


def test_paramwise_options_first_match_wins():
    model = SmallNet()
    cfg = {
        "type": "SGD", "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4,
        "paramwise_options": {
            "(bn|gn)(\\d+)?.(weight|bias)": {"weight_decay": 0.0, "lars_exclude": True},
            "bias": {"lr_mult": 2.0},  # bn1.bias matched the first rule already
            "fc": {"decay_mult": 0.5, "momentum": 0.5},
        },
    }
    opt = build_optimizer(model, cfg)
    g = _groups_by_name(model, opt)
    assert "frozen" not in g
    assert g["bn1.weight"]["weight_decay"] == 0.0 and g["bn1.weight"]["lars_exclude"] is True
    assert g["bn1.bias"]["lr_mult"] == 1.0 and g["bn1.bias"]["weight_decay"] == 0.0
    assert g["conv1.bias"]["lr_mult"] == 2.0 and g["conv1.bias"]["lr"] == pytest.approx(0.2)
    assert g["conv1.bias"]["initial_lr"] == pytest.approx(0.2)
    assert g["fc.bias"]["lr_mult"] == 2.0 and g["fc.bias"]["weight_decay"] == 1e-4  # "bias" came first
    assert g["fc.weight"]["weight_decay"] == pytest.approx(5e-5) and g["fc.weight"]["momentum"] == 0.5
    assert g["conv1.weight"] == {**g["ln.weight"]}  # defaults merged into one group
    assert g["conv1.weight"]["lr"] == 0.1 and g["conv1.weight"]["lr_mult"] == 1.0
    assert g["conv1.weight"]["momentum"] == 0.9 and g["conv1.weight"]["lars_exclude"] is False
    assert len(opt.param_groups) == 4  # defaults, bn, biases x2, fc.weight
    assert sum(len(group["params"]) for group in opt.param_groups) == 8


def test_exclude_bias_and_norm_and_explicit_option_wins():
    model = SmallNet()
    model.gn = nn.GroupNorm(2, 4)
    cfg = {"type": "LARS", "lr": 0.3, "weight_decay": 1e-6, "exclude_bias_and_norm": True,
           "paramwise_options": {"fc\\.bias": {"weight_decay": 0.5}}}
    opt = build_optimizer(model, cfg)
    g = _groups_by_name(model, opt)
    for name in ("conv1.weight", "fc.weight"):
        assert (g[name]["weight_decay"], g[name]["lars_exclude"]) == (1e-6, False), name
    for name in ("conv1.bias", "bn1.weight", "bn1.bias", "ln.weight", "ln.bias", "gn.weight", "gn.bias"):
        assert (g[name]["weight_decay"], g[name]["lars_exclude"]) == (0.0, True), name
    assert (g["fc.bias"]["weight_decay"], g["fc.bias"]["lars_exclude"]) == (0.5, True)
    assert len(opt.param_groups) == 3


class FakeViT(nn.Module):
    def __init__(self, depth: int = 4, dim: int = 8) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(3, dim, 4, 4)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 5, dim))
        self.blocks = nn.ModuleList(nn.Linear(dim, dim) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)


class FakeClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = FakeViT()
        self.head = nn.Linear(8, 3)


def test_layer_wise_lr_decay_on_a_vit():
    model = FakeClassifier()
    cfg = {"type": "AdamW", "lr": 1e-3, "weight_decay": 0.05, "layer_decay_rate": 0.5,
           "paramwise_options": {"head": {"lr_mult": 10.0}}}
    opt = build_optimizer(model, cfg)
    g = _groups_by_name(model, opt)
    # num_layers = 4 (auto); scale = 0.5 ** (5 - layer_id)
    expected = {
        "backbone.patch_embed.weight": 0.5 ** 5, "backbone.patch_embed.bias": 0.5 ** 5,
        "backbone.cls_token": 0.5 ** 5, "backbone.pos_embed": 0.5 ** 5,
        "backbone.blocks.0.weight": 0.5 ** 4, "backbone.blocks.1.bias": 0.5 ** 3,
        "backbone.blocks.2.weight": 0.5 ** 2, "backbone.blocks.3.weight": 0.5,
        "backbone.norm.weight": 1.0, "head.weight": 10.0, "head.bias": 10.0,
    }
    for name, scale in expected.items():
        assert g[name]["lr_mult"] == pytest.approx(scale), name
        assert g[name]["lr"] == pytest.approx(1e-3 * scale), name
        assert g[name]["initial_lr"] == g[name]["lr"]
    no_decay = ["backbone.patch_embed.bias", "backbone.cls_token", "backbone.pos_embed",
                "backbone.blocks.1.bias", "backbone.norm.weight", "backbone.norm.bias", "head.bias"]
    for name in no_decay:
        assert g[name]["weight_decay"] == 0.0, name
    for name in ("backbone.patch_embed.weight", "backbone.blocks.0.weight", "head.weight"):
        assert g[name]["weight_decay"] == 0.05, name

    opt = build_optimizer(model, {**cfg, "num_layers": 6, "paramwise_options": {}})
    g = _groups_by_name(model, opt)
    assert g["backbone.blocks.0.weight"]["lr_mult"] == pytest.approx(0.5 ** 6)
    assert g["head.weight"]["lr_mult"] == 1.0


def test_layer_id_for_vit():
    assert layer_id_for_vit("backbone.patch_embed.projection.weight", 12) == 0
    assert layer_id_for_vit("backbone.cls_token", 12) == 0
    assert layer_id_for_vit("backbone.layers.11.ffn.fc1.weight", 12) == 12
    assert layer_id_for_vit("backbone.blocks.0.attn.qkv.weight", 12) == 1
    assert layer_id_for_vit("backbone.ln1.weight", 12) == 13
    assert layer_id_for_vit("head.fc.weight", 12) == 13


def test_torch_optimizer_types_and_arguments():
    model = nn.Linear(3, 2)
    opt = build_optimizer(model, {"type": "Adam", "lr": 2e-3, "betas": [0.8, 0.9], "eps": 1e-6})
    assert isinstance(opt, torch.optim.Adam)
    assert opt.param_groups[0]["betas"] == (0.8, 0.9) and opt.param_groups[0]["initial_lr"] == 2e-3
    opt = build_optimizer(model, {"type": "SGD", "lr": 1, "nesterov": True, "momentum": 0.9})
    assert opt.param_groups[0]["nesterov"] is True and opt.param_groups[0]["lr"] == 1.0
    wrapped = nn.DataParallel(SmallNet())
    g = _groups_by_name(wrapped.module, build_optimizer(wrapped, {"type": "SGD", "lr": 0.1,
                                                                    "paramwise_options": {"^fc": {"lr_mult": 3}}}))
    assert g["fc.weight"]["lr_mult"] == 3.0  # names have no "module." prefix


# -- errors ---------------------------------------------------------------------------------
def _config(optimizer: dict) -> Config:
    return Config({"optimizer": optimizer}, filename="configs/simclr.toml")


@pytest.mark.parametrize(
    "table, expected",
    [
        ({"type": "SDG", "lr": 0.1}, "configs/simclr.toml: optimizer.type: unknown optimizer type 'SDG'; did you mean 'SGD'?"),
        ({"type": "Lars", "lr": 0.1}, "did you mean 'LARS'?"),
        ({"type": "SGD", "lr": 0.1, "momentun": 0.9},
         "configs/simclr.toml: optimizer.momentun: unknown argument of optimizer SGD; did you mean 'momentum'?"),
        ({"type": "SGD", "lr": 0.1, "betas": [0.9, 0.99]}, "configs/simclr.toml: optimizer.betas: unknown argument"),
        ({"type": "LARS", "momentum": 0.9}, "configs/simclr.toml: optimizer: missing required argument 'lr' of optimizer LARS"),
        ({"type": "SGD", "lr": "0.1"}, "configs/simclr.toml: optimizer.lr: optimizer SGD expects"),
        ({"type": "SGD", "lr": -0.1}, "configs/simclr.toml: optimizer: SGD rejects these arguments: ValueError"),
        ({"type": "SGD", "lr": 0.1, "paramwise_options": {"(bn": {"weight_decay": 0.0}}},
         "configs/simclr.toml: optimizer.paramwise_options.(bn: invalid regular expression"),
        ({"type": "SGD", "lr": 0.1, "paramwise_options": {"bias": {"weight_decy": 0.0}}},
         "configs/simclr.toml: optimizer.paramwise_options.bias.weight_decy: unknown paramwise option; "
         "did you mean 'weight_decay'?"),
        ({"type": "SGD", "lr": 0.1, "paramwise_options": {"bias": {"lars_exclude": 1}}},
         "optimizer.paramwise_options.bias.lars_exclude: must be true or false"),
        ({"type": "AdamW", "lr": 0.1, "paramwise_options": {"bias": {"momentum": 0.5}}},
         "optimizer.paramwise_options.bias.momentum: optimizer AdamW takes no momentum argument"),
        ({"type": "SGD", "lr": 0.1, "paramwise_options": ["bias"]}, "optimizer.paramwise_options: must be a table"),
        ({"type": "SGD", "lr": 0.1, "layer_decay_rate": 0.7},
         "optimizer.layer_decay_rate: found no parameter named blocks.<i>."),
        ({"type": "SGD", "lr": 0.1, "exclude_bias_and_norm": "yes"}, "optimizer.exclude_bias_and_norm: must be true or false"),
        ({"lr": 0.1}, "configs/simclr.toml: optimizer: missing optimizer 'type'"),
    ],
)
def test_config_errors_name_file_and_key(table, expected):
    config = _config(table)
    with pytest.raises(ConfigError) as info:
        build_optimizer(SmallNet(), config["optimizer"], config=config)
    assert expected in str(info.value)


def test_all_problems_reported_together_with_their_origin_file():
    config = Config({"optimizer": {"type": "SGD", "lr": 0.1, "momentun": 0.9, "wd": 1.0}},
                    filename="run.toml", origins={("optimizer",): "run.toml", ("optimizer", "wd"): "--cfg-options"})
    with pytest.raises(ConfigError) as info:
        build_optimizer(SmallNet(), config["optimizer"], config=config)
    lines = str(info.value).splitlines()
    assert lines[0].startswith("run.toml: optimizer.momentun: unknown argument")
    assert lines[1].startswith("--cfg-options: optimizer.wd: unknown argument")
