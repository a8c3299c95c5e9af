"""The ImageNet-1k configs that name an MMSelfSup 0.x config are that config: for each, the
optimizer's per-parameter weight decay, LARS exclusion and lr multiplier are computed here the
way 0.x's ``DefaultOptimizerConstructor`` does (every ``paramwise_options`` regex that
``re.search``-es the 0.x parameter name applies, later ones overriding) and compared with the
groups our optimizer builder makes from the shipped config; the optimizer and ``lr_config``
scalars are compared with the 0.x values. Built on the CPU with plain BN."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from selfsup_core.build import build_model
from selfsup_core.config import load_config
from selfsup_core.engine.optim import build_optimizer

CONFIGS = Path(__file__).resolve().parents[1] / "examples" / "configs"
LARS_BN = {r"(bn|gn)(\d+)?.(weight|bias)": {"weight_decay": 0.0, "lars_exclude": True},
           "bias": {"weight_decay": 0.0, "lars_exclude": True}}
LARS_BN_DOWNSAMPLE = {**LARS_BN, "downsample.1": {"weight_decay": 0.0, "lars_exclude": True}}
WARMUP_10 = {"warmup": "linear", "warmup_iters": 10, "warmup_ratio": 1e-4, "warmup_by_epoch": True}

# config -> (0.x optimizer, 0.x paramwise_options, 0.x lr_config)
ZERO_X = {
    "simclr_resnet50_8xb32-coslr-200e_in1k.toml": (
        {"type": "LARS", "lr": 0.3, "momentum": 0.9, "weight_decay": 1e-6}, LARS_BN,
        {"policy": "CosineAnnealing", "min_lr": 0.0, **WARMUP_10}),
    "byol_resnet50_8xb32-accum16-coslr-200e_in1k.toml": (
        {"type": "LARS", "lr": 4.8, "momentum": 0.9, "weight_decay": 1e-6}, LARS_BN,
        {"policy": "CosineAnnealing", "min_lr": 0.0, **WARMUP_10}),
    "mocov3_resnet50_8xb512-amp-coslr-100e_in1k.toml": (
        {"type": "LARS", "lr": 9.6, "momentum": 0.9, "weight_decay": 1e-6}, LARS_BN_DOWNSAMPLE,
        {"policy": "CosineAnnealing", "min_lr": 0.0, **WARMUP_10}),
    "barlowtwins_resnet50_8xb256-coslr-300e_in1k.toml": (
        {"type": "LARS", "lr": 1.6, "momentum": 0.9, "weight_decay": 1e-6},
        {k: {**v, "lr_mult": 0.024} for k, v in LARS_BN_DOWNSAMPLE.items()},
        {"policy": "CosineAnnealing", "by_epoch": False, "min_lr": 0.0016, "warmup": "linear", "warmup_iters": 10,
         "warmup_ratio": 1.6e-4, "warmup_by_epoch": True}),
    "swav_resnet50_8xb32-mcrop-2-6-coslr-200e_in1k-224-96.toml": (
        {"type": "LARS", "lr": 0.6, "momentum": 0.9, "weight_decay": 1e-6}, {},
        {"policy": "CosineAnnealing", "min_lr": 6e-4}),
    "mae_vit-base-p16_8xb512-coslr-400e_in1k.toml": (
        {"type": "AdamW", "lr": 1.5e-4 * 4096 / 256, "betas": [0.9, 0.95], "weight_decay": 0.05},
        {"ln": {"weight_decay": 0.0}, "bias": {"weight_decay": 0.0}, "pos_embed": {"weight_decay": 0.0},
         "mask_token": {"weight_decay": 0.0}, "cls_token": {"weight_decay": 0.0}},
        {"policy": "StepFixCosineAnnealing", "min_lr": 0.0, "warmup": "linear", "warmup_iters": 40,
         "warmup_ratio": 1e-4, "warmup_by_epoch": True, "by_epoch": False}),
    "mocov3_vit-small-p16_32xb128-fp16-coslr-300e_in1k.toml": (
        {"type": "AdamW", "lr": 2.4e-3, "weight_decay": 0.1}, {},
        {"policy": "CosineAnnealing", "by_epoch": False, "min_lr": 0.0, "warmup": "linear", "warmup_iters": 40,
         "warmup_ratio": 1e-4, "warmup_by_epoch": True}),
    "simmim_swin-base_16xb128-coslr-100e_in1k-192.toml": (
        {"type": "AdamW", "lr": 2e-4 * 2048 / 512, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.05},
        {"norm": {"weight_decay": 0.0}, "bias": {"weight_decay": 0.0}, "absolute_pos_embed": {"weight_decay": 0.0},
         "relative_position_bias_table": {"weight_decay": 0.0}},
        {"policy": "CosineAnnealing", "min_lr": 1e-5 * 2048 / 512, "warmup": "linear", "warmup_iters": 10,
         "warmup_ratio": 1e-6 / 2e-4, "warmup_by_epoch": True, "by_epoch": False}),
}

# our ViT parameter names -> 0.x's (mmcls VisionTransformer / MAEPretrainDecoder names)
_VIT_NAMES = [(r"\bblocks\.", "layers."), (r"\bnorm1\b", "ln1"), (r"\bnorm2\b", "ln2"),
              (r"^backbone\.norm\.", "backbone.ln1."), (r"^neck\.decoder_norm\.", "neck.ln1."),
              (r"patch_embed\.proj\.", "patch_embed.projection."), (r"mlp\.fc1\.", "ffn.layers.0.0."),
              (r"mlp\.fc2\.", "ffn.layers.1.")]


def zero_x_name(name: str, config: str) -> str:
    if config.startswith(("mae_", "mocov3_vit")):
        for pattern, repl in _VIT_NAMES:
            name = re.sub(pattern, repl, name)
    return name


def zero_x_options(name: str, base: dict, paramwise: dict) -> tuple[float, bool, float]:
    """(weight decay, lars_exclude, lr multiplier) of parameter ``name`` under 0.x's rule."""
    group: dict = {}
    for regexp, options in paramwise.items():
        if re.search(regexp, name):
            group.update(options)
    return group.get("weight_decay", base["weight_decay"]), group.get("lars_exclude", False), group.get("lr_mult", 1.0)


@pytest.mark.parametrize("config", sorted(ZERO_X))
def test_optimizer_groups_and_lr_config_are_0x(config: str) -> None:
    optimizer_0x, paramwise, lr_config_0x = ZERO_X[config]
    cfg = load_config(CONFIGS / config)
    for key, value in optimizer_0x.items():
        if key in ("betas",):
            assert list(cfg["optimizer"].get(key, [0.9, 0.999])) == value, key
        else:
            assert cfg["optimizer"].get(key, {"eps": 1e-8}.get(key)) == pytest.approx(value), key
    assert "betas" in optimizer_0x or list(cfg["optimizer"].get("betas", [0.9, 0.999])) == [0.9, 0.999]
    ours = dict(cfg["lr_config"])
    if "min_lr_ratio" in ours:                          # the same minimum, written as a ratio
        ours["min_lr"] = ours.pop("min_lr_ratio") * cfg["optimizer"]["lr"]
    ours.setdefault("by_epoch", True)
    assert ours == pytest.approx({"by_epoch": True, **lr_config_0x}), config

    torch.manual_seed(0)
    model = build_model(load_config(CONFIGS / config, ["model.backbone.norm_cfg={type = \"BN\"}"]
                                    if "norm_cfg" in cfg["model"]["backbone"] else []))
    optimizer = build_optimizer(model, cfg["optimizer"])
    group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    checked = 0
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        group = group_of[id(param)]
        want = zero_x_options(zero_x_name(name, config), optimizer_0x, paramwise)
        got = (group["weight_decay"], bool(group.get("lars_exclude", False)) if optimizer_0x["type"] == "LARS"
               else False, group.get("lr_mult", 1.0))
        assert got == pytest.approx(want), f"{config}: {name}"
        checked += 1
    assert checked > 50
    if config.startswith("simmim"):  # our Swin's norms are all named "*norm*", as 0.x's are
        norms = [n for n, m in model.named_modules() if isinstance(m, torch.nn.LayerNorm)]
        assert norms and all("norm" in n.rsplit(".", 1)[-1] for n in norms)


def test_model_and_hook_settings_are_0x() -> None:
    simclr = load_config(CONFIGS / "simclr_resnet50_8xb32-coslr-200e_in1k.toml")
    assert simclr["model"]["backbone"]["zero_init_residual"] is True          # 0.x's simclr.py
    assert simclr["model"]["gather_gradient"] == "mmselfsup"                  # 0.x's GatherLayer
    densecl = load_config(CONFIGS / "densecl_resnet50_8xb32-coslr-200e_in1k.toml")
    assert not any(h["type"] == "DenseCLHook" for h in densecl.get("hooks", []))  # 0.x enables none
    byol = load_config(CONFIGS / "byol_resnet50_8xb32-accum16-coslr-200e_in1k.toml")
    assert byol["optimizer_config"]["accumulate_steps"] == 16                 # update_interval = 16
    (ema,) = [h for h in byol["hooks"] if h["type"] == "MomentumUpdate"]
    assert ema.get("update_interval", 1) == 1                                 # one EMA update per step
    odc = load_config(CONFIGS / "odc_resnet50_8xb64-steplr-440e_in1k.toml")
    assert odc["model"]["memory_bank"].get("split", "kmeans") == "kmeans"     # scikit-learn, as 0.x
    for name in ("deepcluster_resnet50_8xb64-steplr-200e_in1k.toml", "odc_resnet50_8xb64-steplr-440e_in1k.toml"):
        (hook,) = [h for h in load_config(CONFIGS / name)["hooks"] if h["type"] == "DeepClusterHook"]
        assert hook["clustering"].get("seed_per_round", True) is True         # a fresh seed per round
