"""ViT weights: selfsup's ViTs use timm's key names (``patch_embed.proj``, ``blocks.i.attn.qkv``);
torchvision's ``VisionTransformer`` names (``conv_proj``, ``encoder.layers.encoder_layer_i``) are
renamed both ways and checked against torchvision's (or timm's) model of the same sizes;
mmcls names are recognised on import and kept (the ViT backbone converts them when it loads).
The ``selfsup_convert_backbone`` implementation of the ViT family; torch is imported when it
converts."""
from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from selfsup_core.api import ConvertedBackbone, WeightsError, hookimpl

from . import NO_CLASSIFIER, drop_row

if TYPE_CHECKING:  # pragma: no cover
    import torch

StateDict = dict[str, "torch.Tensor"]


def is_vit(state: Mapping[str, Any]) -> bool:
    """timm-style ViT names (``patch_embed.proj``, ``blocks.i.attn.qkv``)."""
    return "patch_embed.proj.weight" in state and any(k.startswith("blocks.0.attn.qkv") for k in state)


def is_torchvision_vit(state: Mapping[str, Any]) -> bool:
    """torchvision ``VisionTransformer`` names (``conv_proj``, ``encoder.layers.encoder_layer_i``)."""
    return "conv_proj.weight" in state and any(k.startswith("encoder.layers.encoder_layer_0.") for k in state)


def is_mmcls_vit(state: Mapping[str, Any]) -> bool:
    """mmcls / MMSelfSup ViT names (``patch_embed.projection``, ``layers.i.ln1``)."""
    return "patch_embed.projection.weight" in state


def timm_vit_differences(state: Mapping[str, torch.Tensor]) -> list[str]:
    """Keys of a selfsup ViT state dict that timm's ``VisionTransformer`` has no place for."""
    return [k for k in state if k == "mask_token" or k.startswith(("decoder", "mask_token"))]


#: ViT key names: (timm / selfsup, torchvision); ``{i}`` is a block index, a name ending in
#: "." a prefix (the rest of the key is kept), any other name a whole key.
_VIT_NAMES = (
    ("cls_token", "class_token"),
    ("pos_embed", "encoder.pos_embedding"),
    ("patch_embed.proj.", "conv_proj."),
    ("blocks.{i}.norm1.", "encoder.layers.encoder_layer_{i}.ln_1."),
    ("blocks.{i}.attn.qkv.weight", "encoder.layers.encoder_layer_{i}.self_attention.in_proj_weight"),
    ("blocks.{i}.attn.qkv.bias", "encoder.layers.encoder_layer_{i}.self_attention.in_proj_bias"),
    ("blocks.{i}.attn.proj.", "encoder.layers.encoder_layer_{i}.self_attention.out_proj."),
    ("blocks.{i}.norm2.", "encoder.layers.encoder_layer_{i}.ln_2."),
    ("blocks.{i}.mlp.fc1.", "encoder.layers.encoder_layer_{i}.mlp.0."),
    ("blocks.{i}.mlp.fc2.", "encoder.layers.encoder_layer_{i}.mlp.3."),
    ("norm.", "encoder.ln."),
)
#: Older torchvision releases named the MLP layers ``linear_1`` / ``linear_2``.
_OLD_TORCHVISION_VIT_NAMES = (
    ("blocks.{i}.mlp.fc1.", "encoder.layers.encoder_layer_{i}.mlp.linear_1."),
    ("blocks.{i}.mlp.fc2.", "encoder.layers.encoder_layer_{i}.mlp.linear_2."),
)


def _rules(pairs: tuple[tuple[str, str], ...], reverse: bool = False) -> tuple[tuple[str, str], ...]:
    """``(regex, replacement)`` rules mapping the first name of each pair to the second
    (or the second to the first with ``reverse``)."""
    rules = []
    for source, target in pairs:
        if reverse:
            source, target = target, source
        pattern = "^" + re.escape(source).replace(re.escape("{i}"), r"(\d+)") + ("" if source.endswith(".") else "$")
        rules.append((pattern, target.replace("{i}", r"\1")))
    return tuple(rules)


_TIMM_TO_TV_VIT = _rules(_VIT_NAMES)
_TV_TO_TIMM_VIT = _rules(_VIT_NAMES + _OLD_TORCHVISION_VIT_NAMES, reverse=True)


def _rename(state: Mapping[str, torch.Tensor], rules: tuple[tuple[str, str], ...]) -> tuple[StateDict, list[str]]:
    """Apply the first matching ``(pattern, replacement)`` to each key: ``(renamed, unmatched keys)``."""
    renamed: StateDict = {}
    unmatched: list[str] = []
    for key, value in state.items():
        for pattern, replacement in rules:
            new, count = re.subn(pattern, replacement, key)
            if count:
                renamed[new] = value
                break
        else:
            unmatched.append(key)
    return renamed, unmatched


def vit_to_torchvision(state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """timm-named ViT weights (ours) -> torchvision ``VisionTransformer`` names, checked
    against a torchvision model of the same sizes built on the meta device.

    Returns ``{"state", "arch", "exact", "image_size", "patch_size", "hidden_dim", "num_layers",
    "mlp_dim"}``. Raises :class:`WeightsError` for what torchvision's ViT cannot hold (no cls
    token, no qkv bias, extra tokens).
    """
    import torch
    import torchvision

    if "cls_token" not in state:
        raise WeightsError("--to torchvision: this ViT has no cls token, which torchvision's VisionTransformer "
                           "always has; use --to timm or --to raw")
    if not any(k.endswith("attn.qkv.bias") for k in state):
        raise WeightsError("--to torchvision: this ViT has no qkv bias, which torchvision's VisionTransformer "
                           "always has; use --to timm or --to raw")
    renamed, unmatched = _rename(state, _TIMM_TO_TV_VIT)
    if unmatched:
        raise WeightsError(f"--to torchvision: no torchvision VisionTransformer name for {', '.join(unmatched[:4])}; "
                           "use --to timm or --to raw")
    proj = renamed["conv_proj.weight"]
    hidden, patch = int(proj.shape[0]), int(proj.shape[2])
    grid = int(round((int(renamed["encoder.pos_embedding"].shape[1]) - 1) ** 0.5))
    layers = 1 + max(int(m.group(1)) for k in renamed for m in [re.match(r"encoder\.layers\.encoder_layer_(\d+)\.", k)] if m)
    mlp = int(renamed["encoder.layers.encoder_layer_0.mlp.0.weight"].shape[0])
    if int(proj.shape[1]) != 3:
        raise WeightsError(f"--to torchvision: torchvision's VisionTransformer takes 3 input channels, this one "
                           f"{int(proj.shape[1])}; use --to timm or --to raw")
    with torch.device("meta"):
        reference = torchvision.models.VisionTransformer(
            image_size=grid * patch, patch_size=patch, num_layers=layers, num_heads=1, hidden_dim=hidden, mlp_dim=mlp
        ).state_dict()
    reference = {k: v for k, v in reference.items() if not k.startswith("heads.")}
    problems = sorted(set(reference) ^ set(renamed))
    problems += [k for k, v in reference.items() if k in renamed and tuple(v.shape) != tuple(renamed[k].shape)]
    if problems:
        raise WeightsError(f"--to torchvision: torchvision's VisionTransformer does not take these weights "
                           f"(first differences: {', '.join(problems[:4])}); use --to timm or --to raw")
    return {"state": renamed, "arch": "VisionTransformer", "exact": True, "image_size": grid * patch,
            "patch_size": patch, "hidden_dim": hidden, "num_layers": layers, "mlp_dim": mlp}


def vit_from_torchvision(state: Mapping[str, torch.Tensor]) -> StateDict:
    """torchvision ``VisionTransformer`` weights -> the timm names selfsup's ViT uses
    (``heads.*``, the classifier, is left out by the caller)."""
    renamed, unmatched = _rename({k: v for k, v in state.items() if not k.startswith("heads.")}, _TV_TO_TIMM_VIT)
    if unmatched:
        raise WeightsError(f"no selfsup ViT name for torchvision keys {', '.join(unmatched[:4])}")
    return renamed


def _check_timm_vit(state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """Build timm's ``VisionTransformer`` with this state dict's sizes (meta device) and
    compare key names and shapes; ``{"checked_with_timm": None}`` without timm."""
    try:
        import torch
        from timm.models.vision_transformer import VisionTransformer
    except ImportError:
        return {"checked_with_timm": None}
    proj = state["patch_embed.proj.weight"]
    embed, in_chans, patch = int(proj.shape[0]), int(proj.shape[1]), int(proj.shape[2])
    has_cls = "cls_token" in state
    tokens = int(state["pos_embed"].shape[1]) if "pos_embed" in state else 0
    grid = int(round((tokens - int(has_cls)) ** 0.5))
    depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    hidden = int(state["blocks.0.mlp.fc1.weight"].shape[0])
    with torch.device("meta"):
        reference = VisionTransformer(
            img_size=grid * patch, patch_size=patch, in_chans=in_chans, embed_dim=embed, depth=depth, num_heads=1,
            mlp_ratio=hidden / embed, qkv_bias="blocks.0.attn.qkv.bias" in state, class_token=has_cls,
            global_pool="token" if has_cls else "avg", num_classes=0,
            fc_norm=False if has_cls else None,
        ).state_dict()
    missing = sorted(set(reference) - set(state))
    unexpected = sorted(set(state) - set(reference))
    shapes = [f"{k}: {tuple(state[k].shape)} here, {tuple(v.shape)} in timm" for k, v in reference.items()
              if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if missing or unexpected or shapes:
        raise WeightsError("--to timm: timm's VisionTransformer does not take these weights as they are: "
                           + "; ".join(p for p in (f"missing {', '.join(missing[:4])}" if missing else "",
                                                   f"unexpected {', '.join(unexpected[:4])}" if unexpected else "",
                                                   "; ".join(shapes[:2])) if p))
    return {"checked_with_timm": True, "exact": True, "img_size": grid * patch, "patch_size": patch,
            "embed_dim": embed, "depth": depth}


def export_vit(state: Mapping[str, torch.Tensor], to: str) -> ConvertedBackbone:
    """A selfsup ViT for ``to``: masked-image-modelling tokens dropped, names checked against
    timm's model, or renamed to torchvision's and checked against it."""
    dropped = []
    extra = timm_vit_differences(state)
    if extra:
        state = {k: v for k, v in state.items() if k not in extra}
        dropped.append(drop_row(", ".join(extra), len(extra),
                                f"masked-image-modelling token; {to}'s VisionTransformer has none"))
    if to == "timm":
        return ConvertedBackbone(dict(state), {"library": "timm", "arch": "VisionTransformer", **_check_timm_vit(state)},
                                 dropped)
    converted = vit_to_torchvision(state)
    return ConvertedBackbone(converted.pop("state"), {"library": "torchvision", **converted}, dropped)


#: import dialect -> (the layouts it comes from, its classifier's key prefixes)
_DIALECTS = {"timm-vit": ("timm", ("head.", "head_dist.")), "torchvision-vit": ("torchvision", ()),
             "mmcls-vit": ("mmcls", ("head.",))}


def import_vit(state: Mapping[str, torch.Tensor], dialect: str) -> ConvertedBackbone:
    """timm / torchvision / mmcls ViT weights without their classifier, in the names selfsup's
    ViT loads (torchvision's renamed to timm's; mmcls's kept, converted on load)."""
    dropped = []
    if dialect == "torchvision-vit":
        heads = [k for k in state if k.startswith("heads.")]
        if heads:
            dropped.append(drop_row("heads.*", len(heads), NO_CLASSIFIER))
        state = vit_from_torchvision(state)
    classifier = _DIALECTS[dialect][1]
    removed = [k for k in state if k.startswith(classifier)] if classifier else []
    if removed:
        state = {k: v for k, v in state.items() if k not in removed}
        dropped.append(drop_row(", ".join(sorted({k.rsplit(".", 1)[0] + ".*" for k in removed})), len(removed),
                                NO_CLASSIFIER))
    return ConvertedBackbone(dict(state), {"dialect": dialect}, dropped)


def _import_dialect(state: Mapping[str, Any]) -> str | None:
    if is_vit(state):
        return "timm-vit"
    if is_torchvision_vit(state):
        return "torchvision-vit"
    return "mmcls-vit" if is_mmcls_vit(state) else None


@hookimpl
def selfsup_convert_backbone(state: Mapping[str, torch.Tensor], direction: str, layout: str,
                             backbone: Mapping[str, Any] | None) -> ConvertedBackbone | None:
    """ViT weights, recognised by their key names: export to ``torchvision`` / ``timm``,
    import from ``timm``, ``torchvision``, ``mmcls`` (or ``auto``)."""
    if direction == "export":
        return export_vit(state, layout) if layout in ("torchvision", "timm") and is_vit(state) else None
    if direction != "import":
        return None
    dialect = _import_dialect(state)
    if dialect is None or layout not in ("auto", _DIALECTS[dialect][0]):
        return None
    return import_vit(state, dialect)
