"""ResNet weights in torchvision's (and timm's) key names: selfsup's ResNets use them already,
so a conversion checks them against torchvision's models (and timm's, where installed) and
drops or reports the classifier. The ``selfsup_convert_backbone`` implementation of the
ResNet family; torch is imported when it converts."""
from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from selfsup_core.api import ConvertedBackbone, WeightsError, hookimpl

from . import CLASSIFIER, NO_CLASSIFIER, drop_row

if TYPE_CHECKING:  # pragma: no cover
    import torch

_LAYER_BLOCK = re.compile(r"layer([1-4])\.(\d+)\.")
_TV_RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d",
               "resnext101_32x8d", "resnext101_64x4d", "wide_resnet50_2", "wide_resnet101_2")


def is_resnet(state: Mapping[str, Any]) -> bool:
    """Torchvision-style ResNet names: ``conv1`` or a deep ``stem`` and ``layerN.B.*``."""
    return any(_LAYER_BLOCK.match(k) for k in state) and ("conv1.weight" in state or "stem.0.weight" in state)


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


def _check_timm_resnet(state: Mapping[str, torch.Tensor], arch: str) -> bool | None:
    """Whether timm's ``arch`` has exactly these key names (None: timm is not installed)."""
    try:
        import timm
        import torch
    except ImportError:
        return None
    with torch.device("meta"):
        names = {k for k in timm.create_model(arch, pretrained=False).state_dict() if not k.startswith("fc.")}
    if names != set(state):
        raise WeightsError(f"--to timm: timm's {arch} has other key names than this backbone "
                           f"(first differences: {', '.join(sorted(names ^ set(state))[:4])})")
    return True


def export_resnet(state: Mapping[str, torch.Tensor], to: str) -> ConvertedBackbone:
    """A ResNet for ``to`` (``torchvision`` or ``timm``): ``fc`` dropped, names checked."""
    dropped = []
    fc = [k for k in state if k.startswith("fc.")]
    if fc:
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        dropped.append(drop_row("fc.*", len(fc), CLASSIFIER))
    match = match_torchvision_resnet(state)
    target = {"library": to, **match}
    if to == "timm":
        target["checked_with_timm"] = _check_timm_resnet(state, match["arch"])
    return ConvertedBackbone(dict(state), target, dropped)


def import_resnet(state: Mapping[str, torch.Tensor]) -> ConvertedBackbone:
    """torchvision / timm / mmcls ResNet weights (the same names): ``fc`` dropped, the
    torchvision architecture named when one matches (else ``arch`` None)."""
    removed = [k for k in state if k.startswith("fc.")]
    dropped = []
    if removed:
        state = {k: v for k, v in state.items() if k not in removed}
        dropped.append(drop_row(", ".join(sorted({k.rsplit(".", 1)[0] + ".*" for k in removed})), len(removed),
                                NO_CLASSIFIER))
    try:
        arch = match_torchvision_resnet(state)["arch"] if state else None
    except WeightsError:
        arch = None
    return ConvertedBackbone(dict(state), {"dialect": "resnet", "arch": arch}, dropped)


@hookimpl
def selfsup_convert_backbone(state: Mapping[str, torch.Tensor], direction: str, layout: str,
                             backbone: Mapping[str, Any] | None) -> ConvertedBackbone | None:
    """ResNet weights, recognised by their key names: export to ``torchvision`` / ``timm``,
    import from ``torchvision``, ``timm``, ``mmcls`` or ``auto``."""
    if not is_resnet(state):
        return None
    if direction == "export" and layout in ("torchvision", "timm"):
        return export_resnet(state, layout)
    if direction == "import" and layout in ("auto", "torchvision", "timm", "mmcls"):
        return import_resnet(state)
    return None
