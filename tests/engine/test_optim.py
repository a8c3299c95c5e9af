"""build_optimizer's param groups and errors (LARS itself: plugins/selfsup-models/tests/test_lars.py)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from selfsup_core.config import Config
from selfsup_core.engine.optim import build_optimizer, layer_id_for_vit
from selfsup_core.errors import ConfigError


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
