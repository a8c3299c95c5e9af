"""A ``TimmBackbone``'s weights: timm's own key names under ``timm_model.``. Exported to timm
as they are; a standard ResNet or ViT inside is handed to those families (e.g. for
``--to torchvision``). The ``selfsup_convert_backbone`` implementation of ``TimmBackbone``;
it runs before the others (``tryfirst``) since it unwraps what they convert."""
from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from selfsup_core.api import ConvertedBackbone, hookimpl

from . import convert_backbone
from .resnet import is_resnet
from .vit import is_vit

if TYPE_CHECKING:  # pragma: no cover
    import torch

#: Where :class:`~selfsup_models.backbones.timm_backbone.TimmBackbone` keeps the timm model.
TIMM_BACKBONE_PREFIX = "timm_model."


@hookimpl(tryfirst=True)
def selfsup_convert_backbone(state: Mapping[str, torch.Tensor], direction: str, layout: str,
                             backbone: Mapping[str, Any] | None) -> ConvertedBackbone | None:
    """Export a TimmBackbone: without its ``timm_model.`` prefix, to timm as it is, otherwise
    converted by the family its keys belong to (a ResNet or ViT)."""
    if direction != "export" or not state or not all(k.startswith(TIMM_BACKBONE_PREFIX) for k in state):
        return None
    state = {k[len(TIMM_BACKBONE_PREFIX):]: v for k, v in state.items()}
    if layout == "timm" and not (is_resnet(state) or is_vit(state)):
        return ConvertedBackbone(state, {"library": "timm", "arch": "TimmBackbone"}, [])
    return convert_backbone(state, direction, layout, None)
