"""State dicts in and out: read any weights file, pick a training checkpoint's backbone,
recognise ResNets and ViTs by their key names, and write ``.pth`` or ``.safetensors``.

Used by ``selfsup-run export`` and ``import-weights`` (:mod:`selfsup_core.tools.export`).
Everything is read with ``torch.load(..., weights_only=True)``.
"""
from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import SelfSupError
from . import safetensors_io

if TYPE_CHECKING:  # pragma: no cover
    import torch

StateDict = dict[str, "torch.Tensor"]

#: Where the online (query / student) backbone lives in training checkpoints, most specific
#: first: selfsup and MMSelfSup (``backbone.``), OpenSelfSup MoCo/NPID-style encoders
#: (``encoder_q.0.``), OpenSelfSup BYOL (``online_net.0.``), DDP-wrapped models.
BACKBONE_PREFIXES = ("backbone.", "module.backbone.", "model.backbone.", "encoder_q.0.", "online_net.0.",
                     "module.encoder_q.0.", "module.online_net.0.")

#: Why a group of training-checkpoint keys is not exported, by top-level name.
_DROP_REASONS = {
    "encoder_k": "momentum (key) encoder copy",
    "momentum_encoder": "momentum encoder copy",
    "target_backbone": "momentum (target) backbone copy",
    "target_neck": "momentum (target) neck copy",
    "target_net": "momentum (target) network copy",
    "teacher": "teacher copy",
    "neck": "projection neck (pre-training only)",
    "head": "pre-training head",
    "online_net": "online projector (pre-training only)",
    "encoder_q": "query projector (pre-training only)",
    "queue": "negative-key queue",
    "queue2": "negative-key queue",
    "queue_ptr": "queue pointer",
    "queue2_ptr": "queue pointer",
    "memory_bank": "memory bank",
    "fc": "classifier (not part of a backbone)",
}


class WeightsError(SelfSupError, ValueError):
    """A weights file cannot be read, understood or written."""


def read_state_dict(path: str | os.PathLike[str], map_location: Any = "cpu") -> tuple[StateDict, dict[str, Any]]:
    """The tensor state dict in ``path`` and the checkpoint's ``meta`` (empty if none).

    Accepts ``.safetensors``, raw state dicts and training checkpoints (``state_dict``,
    ``model``, ``module`` ... entries); a DDP ``module.`` prefix on every key is removed.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such file")
    if path.suffix == ".safetensors":
        try:
            return safetensors_io.load_file(path), safetensors_io.read_metadata(path)
        except safetensors_io.SafetensorsError as exc:
            raise WeightsError(str(exc)) from exc
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - every failure becomes one line
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        if "Weights only load failed" in str(exc):
            raise WeightsError(
                f"{path}: holds objects that are not plain tensors and containers, so it is not loaded "
                "(weights_only=True); re-save just its state dict: torch.save(ckpt['state_dict'], 'weights.pth')"
            ) from exc
        raise WeightsError(f"{path}: cannot be read by torch.load(weights_only=True) ({first[:200]})") from exc
    _check_integrity(obj, path)
    meta = obj.get("meta") if isinstance(obj, Mapping) and isinstance(obj.get("meta"), Mapping) else {}
    if meta.get("sharded"):  # an fsdp2 run's checkpoint: the weights are in its shard folder
        raise WeightsError(f"{path}: holds FSDP2 shards ({meta['sharded']}), not weights; consolidate them first: "
                           f"python -m torch.distributed.checkpoint.format_utils dcp_to_torch "
                           f"{path.parent / str(meta['sharded'])} weights.pth")
    return unwrap_state_dict(obj, str(path)), dict(meta)


def _check_integrity(obj: Any, path: Path) -> None:
    """Verify (and drop) the ``checksum`` entry of a selfsup training checkpoint loaded from
    ``path``; a file without one is taken as it is. Raises :class:`WeightsError` on a mismatch."""
    if not isinstance(obj, dict):
        return
    from ..engine.checksum import CHECKSUM_KEY, ChecksumMismatch, verify_checksum

    try:
        verify_checksum(obj)
    except ChecksumMismatch as exc:
        raise WeightsError(f"{path}: is damaged: {exc}") from exc
    obj.pop(CHECKSUM_KEY, None)


def unwrap_state_dict(obj: Any, source: str) -> StateDict:
    """The tensor state dict inside a loaded file: ``obj`` itself, or its ``state_dict`` /
    ``model`` / ``model_state_dict`` / ``module`` / ``teacher`` / ``net`` entry (up to three
    levels); non-tensor entries are left out and a DDP ``module.`` prefix on every key is
    removed. ``source`` names the file in errors."""
    for _ in range(3):
        if isinstance(obj, Mapping) and obj and not all(_is_tensor(v) for v in obj.values()):
            inner = next((obj[k] for k in ("state_dict", "model", "model_state_dict", "module", "teacher", "net")
                          if isinstance(obj.get(k), Mapping)), None)
            if inner is None:
                break
            obj = inner
    if not isinstance(obj, Mapping):
        raise WeightsError(f"{source}: holds a {type(obj).__name__}, not a state dict")
    state = {k: v for k, v in obj.items() if isinstance(k, str) and _is_tensor(v)}
    if not state:
        raise WeightsError(f"{source}: holds no tensors (top-level keys: {', '.join(map(str, list(obj)[:8]))})")
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def _is_tensor(value: Any) -> bool:
    import torch

    return isinstance(value, torch.Tensor)


def find_backbone_prefix(state: Mapping[str, Any]) -> str | None:
    """The prefix of the online backbone's keys in a training checkpoint, or None when the
    keys have no known prefix (the file is already a bare backbone)."""
    for prefix in BACKBONE_PREFIXES:
        if any(k.startswith(prefix) for k in state):
            return prefix
    return None


def split_prefix(state: Mapping[str, Any], prefix: str) -> tuple[StateDict, dict[str, list[str]]]:
    """``(kept, dropped)``: the keys under ``prefix`` with it removed, and every other key
    grouped by its first component."""
    kept: StateDict = {}
    dropped: dict[str, list[str]] = {}
    for key, value in state.items():
        if key.startswith(prefix):
            kept[key[len(prefix):]] = value
        else:
            dropped.setdefault(key.split(".", 1)[0], []).append(key)
    return kept, dropped


def select_prefix(state: Mapping[str, Any], prefix: str, source: str) -> tuple[StateDict, dict[str, list[str]]]:
    """:func:`split_prefix`, refusing a ``prefix`` that no key of ``source`` starts with."""
    kept, dropped = split_prefix(state, prefix)
    if not kept:
        found = sorted({k.split(".", 1)[0] + "." for k in state})
        raise WeightsError(f"no key of {source} starts with prefix {prefix!r}; prefixes found: {', '.join(found[:10])}")
    return kept, dropped


def drop_reason(group: str) -> str:
    """Why a top-level key group of a training checkpoint is left out of an export."""
    return _DROP_REASONS.get(group, "not under the backbone prefix")


def count_parameters(state: Mapping[str, torch.Tensor]) -> int:
    """Elements of the floating-point tensors, without BN statistics counters."""
    return sum(int(v.numel()) for k, v in state.items()
               if v.is_floating_point() and not k.endswith(("running_mean", "running_var")))


# -- architectures --------------------------------------------------------------------------
_LAYER_BLOCK = re.compile(r"layer([1-4])\.(\d+)\.")
_TV_RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d",
               "resnext101_32x8d", "resnext101_64x4d", "wide_resnet50_2", "wide_resnet101_2")


def is_resnet(state: Mapping[str, Any]) -> bool:
    """Torchvision-style ResNet names: ``conv1`` or a deep ``stem`` and ``layerN.B.*``."""
    return any(_LAYER_BLOCK.match(k) for k in state) and ("conv1.weight" in state or "stem.0.weight" in state)


def is_vit(state: Mapping[str, Any]) -> bool:
    """timm-style ViT names (``patch_embed.proj``, ``blocks.i.attn.qkv``)."""
    return "patch_embed.proj.weight" in state and any(k.startswith("blocks.0.attn.qkv") for k in state)


def match_torchvision_resnet(state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """Compare a ResNet backbone state dict with torchvision's ResNets (built on the meta
    device, so nothing is allocated).

    Returns ``{"arch", "exact", "shape_differences": [...]}`` for the torchvision model whose
    non-``fc`` key names equal ``state``'s; ``exact`` when every shape matches too. Raises
    :class:`WeightsError` naming what does not map (a deep stem, ResNet-D shortcuts, ...).
    """
    import torch
    import torchvision

    if "stem.0.weight" in state:
        raise WeightsError("this ResNet has a deep stem (stem.*, ResNetV1d / ResNet-C); torchvision's ResNets "
                           "have a single conv1: export it with --to raw")
    if any(re.search(r"downsample\.2\.", k) for k in state):
        raise WeightsError("this ResNet has average-pool shortcuts (downsample.1/.2, ResNet-D); torchvision's "
                           "shortcuts are downsample.0/.1: export it with --to raw")
    names = set(state)
    best: tuple[int, str, list[str]] | None = None
    for arch in _TV_RESNETS:
        with torch.device("meta"):
            reference = getattr(torchvision.models, arch)().state_dict()
        reference = {k: v for k, v in reference.items() if not k.startswith("fc.")}
        if set(reference) != names:
            continue
        differences = [f"{k}: {tuple(state[k].shape)} here, {tuple(v.shape)} in torchvision {arch}"
                       for k, v in reference.items() if tuple(state[k].shape) != tuple(v.shape)]
        if best is None or len(differences) < best[0]:
            best = (len(differences), arch, differences)
        if not differences:
            break
    if best is None:
        blocks = sorted({(int(m.group(1)), int(m.group(2))) for k in state for m in [_LAYER_BLOCK.match(k)] if m})
        counts = [1 + max((b for s, b in blocks if s == stage), default=-1) for stage in (1, 2, 3, 4)]
        raise WeightsError(f"no torchvision ResNet has these key names (blocks per stage {counts}); "
                           "export it with --to raw")
    _, arch, differences = best
    return {"arch": arch, "exact": not differences, "shape_differences": differences}


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


def is_torchvision_vit(state: Mapping[str, Any]) -> bool:
    """torchvision ``VisionTransformer`` names (``conv_proj``, ``encoder.layers.encoder_layer_i``)."""
    return "conv_proj.weight" in state and any(k.startswith("encoder.layers.encoder_layer_0.") for k in state)


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


# -- writing --------------------------------------------------------------------------------
def output_format(out: str | os.PathLike[str], requested: str | None) -> str:
    """``pth`` or ``safetensors``: as requested, else from the file suffix, else ``pth``."""
    if requested:
        return requested
    return "safetensors" if str(out).endswith(".safetensors") else "pth"


def check_writable(out: Path, sources: list[Path], force: bool) -> None:
    """Refuse to overwrite an input, or an existing file without ``force``."""
    for source in sources:
        if out.exists() and source.exists() and out.resolve() == source.resolve():
            raise WeightsError(f"{out}: is the input file; write the weights to another path")
    if out.exists() and not force:
        raise WeightsError(f"{out}: exists; pass --force to overwrite it, or choose another path")
    if out.exists() and out.is_dir():
        raise WeightsError(f"{out}: is a directory; give a file name such as {out}/backbone.pth")


def write_state_dict(state: StateDict, out: Path, fmt: str, metadata: Mapping[str, str]) -> None:
    """Write ``state`` atomically: a plain ``torch.save`` dict, or safetensors with ``metadata``."""
    # clone: a view would drag its whole storage (e.g. a fused checkpoint buffer) into the file
    state = {k: v.detach().clone().contiguous() for k, v in state.items()}
    if fmt == "safetensors":
        safetensors_io.save_file(state, out, metadata=metadata)
        return
    from ..engine.checkpoint import atomic_save

    atomic_save(state, out)


__all__ = [
    "BACKBONE_PREFIXES",
    "WeightsError",
    "check_writable",
    "count_parameters",
    "drop_reason",
    "find_backbone_prefix",
    "is_resnet",
    "is_torchvision_vit",
    "is_vit",
    "match_torchvision_resnet",
    "output_format",
    "read_state_dict",
    "select_prefix",
    "split_prefix",
    "timm_vit_differences",
    "unwrap_state_dict",
    "vit_from_torchvision",
    "vit_to_torchvision",
    "write_state_dict",
]
